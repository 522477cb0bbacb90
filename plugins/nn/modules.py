"""Small utilities that model code, loss terms and hooks share: reading a torchreid training
output, and forwards that run with autocast off, with parameters frozen, or without
counting in BatchNorm's running statistics."""
import contextlib

import torch


def split_outputs(outputs):
    """A torchreid training output as ``(logits, features or None)``: a softmax model returns
    logits (a list of part logits for part models such as PCB), a triplet model the tuple
    ``(logits, features)``."""
    if isinstance(outputs, tuple):
        return outputs[0], (outputs[1] if len(outputs) > 1 else None)
    return outputs, None


def logits_of(outputs):
    """The identity logits of a torchreid training output (see :func:`split_outputs`)."""
    return split_outputs(outputs)[0]


def fp32(device_type):
    """Context in which autocast is off, so products run in the inputs' (fp32) precision
    (nothing to switch off on devices without autocast, such as ``meta``)."""
    if device_type not in ('cpu', 'cuda'):
        return contextlib.nullcontext()
    return torch.autocast(device_type, enabled=False)


@contextlib.contextmanager
def frozen(module):
    """Run a forward whose graph reaches the inputs but not ``module``'s parameters."""
    flags = [p.requires_grad for p in module.parameters()]
    for p in module.parameters():
        p.requires_grad_(False)
    try:
        yield module
    finally:
        for p, flag in zip(module.parameters(), flags):
            p.requires_grad_(flag)


@contextlib.contextmanager
def batchnorm_stats_frozen(module):
    """Extra forwards in training mode (batch statistics) that leave BN running estimates untouched.

    For side passes such as a no-attention prediction: they normalise like the
    main forward but must not count as a second batch in the running statistics.
    """
    norms = [m for m in module.modules()
             if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [(m.momentum, m.num_batches_tracked.clone()) for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield module
    finally:
        for m, (momentum, tracked) in zip(norms, saved):
            m.momentum = momentum
            m.num_batches_tracked.copy_(tracked)
