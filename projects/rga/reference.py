"""The official RGA computation, kept as the oracle for tests and benchmarks.

:func:`reference_forward` follows ``RGA_Module.forward`` of the official code
(microsoft/Relation-Aware-Global-Attention-Networks, ``rga_modules.py``) step by
step on an :class:`~projects.rga.modules.RGAModule`'s own weights: it
materialises every relation matrix, stacks the incoming and outgoing rows and
runs the full 1x1 conv over them. It is what the production module must equal
(forward and backward) and what the ``rga`` benchmark section compares against;
never use it for training.
"""
import contextlib
import functools

import torch

from .modules import RGAModule


def reference_forward(module, x, return_attention=False):
    """``module``'s output computed the official way (relation matrices and all)."""
    b, c, h, w = x.shape
    attention = {}
    if module.use_spatial:
        theta = module.theta_spatial(x).view(b, module.inter_channel, -1).permute(0, 2, 1)
        phi = module.phi_spatial(x).view(b, module.inter_channel, -1)
        relations = torch.matmul(theta, phi)  # Gs, (b, HW, HW)
        incoming = relations.permute(0, 2, 1).reshape(b, h * w, h, w)
        outgoing = relations.view(b, h * w, h, w)
        joint = module.gg_spatial(torch.cat((incoming, outgoing), 1))
        unary = torch.mean(module.gx_spatial(x), dim=1, keepdim=True)
        weights = module.W_spatial(torch.cat((unary, joint), 1))
        attention['spatial'] = torch.sigmoid(weights)
        x = torch.sigmoid(weights.expand_as(x)) * x
    if module.use_channel:
        xc = x.view(b, c, -1).permute(0, 2, 1).unsqueeze(-1)
        theta = module.theta_channel(xc).squeeze(-1).permute(0, 2, 1)
        phi = module.phi_channel(xc).squeeze(-1)
        relations = torch.matmul(theta, phi)  # Gc, (b, C, C)
        incoming = relations.permute(0, 2, 1).unsqueeze(-1)
        outgoing = relations.unsqueeze(-1)
        joint = module.gg_channel(torch.cat((incoming, outgoing), 1))
        unary = torch.mean(module.gx_channel(xc), dim=1, keepdim=True)
        weights = module.W_channel(torch.cat((unary, joint), 1)).transpose(1, 2)
        attention['channel'] = torch.sigmoid(weights)
        x = torch.sigmoid(weights) * x
    return (x, attention) if return_attention else x


@contextlib.contextmanager
def reference_rga(model):
    """Run every :class:`RGAModule` in ``model`` with :func:`reference_forward` inside the block."""
    modules = [m for m in model.modules() if isinstance(m, RGAModule)]
    for module in modules:
        module.forward = functools.partial(reference_forward, module)
    try:
        yield model
    finally:
        for module in modules:
            del module.forward
