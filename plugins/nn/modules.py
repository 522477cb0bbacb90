"""Small utilities that model code, loss terms and hooks share: reading a torchreid training
output, and forwards that run with autocast off, with parameters frozen, or without
counting in BatchNorm's running statistics."""
import contextlib

import torch


def split_outputs(outputs):
    """A torchreid training output as ``(first, second or None)``: a triplet model's
    ``(logits, features)``; a softmax model's logits and None. A list output (a part model's
    part logits, PCB) is read the same way, as its first two entries: what the teacher
    distillation hook reads from the teacher and, by default, from the student."""
    if isinstance(outputs, (tuple, list)):
        return outputs[0], (outputs[1] if len(outputs) > 1 else None)
    return outputs, None


def logits_of(outputs):
    """The identity logits of a torchreid training output: the first entry of a triplet
    model's ``(logits, features)`` tuple, else the output itself (a list of part logits
    stays whole: the identification loss supervises every part)."""
    return outputs[0] if isinstance(outputs, tuple) else outputs


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
