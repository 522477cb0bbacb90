"""Mixed precision (``train.amp``): autocast for forwards, a gradient scaler where fp16 needs one.

``'bf16'`` keeps fp32's exponent range, so it needs no loss scaling; ``'fp16'``
gets one ``torch.amp.GradScaler`` per optimiser (the main network's and each
hook network's: a critic or discriminator step is scaled and skipped on
overflow independently). ``''`` (the default) is full fp32.

Model code that must compute in full precision under autocast (the distance products
that mining and margin losses compare) uses :func:`plugins.nn.modules.fp32`.

:func:`use_fused_step` switches an optimiser to its fused kernels, which can skip
a step on a device flag (``found_inf``): the engine skips non-finite steps, and
GradScaler skips fp16 overflows, without reading anything on the host.
"""
import contextlib
import functools

import torch

MODES = {'': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}


class Precision:
    """Autocast context and per-optimiser gradient scalers for one engine."""

    def __init__(self, mode, device):
        if mode not in MODES:
            raise ValueError('train.amp must be one of {}, got {!r}'.format(sorted(MODES), mode))
        self.mode = mode
        self.device_type = torch.device(device).type
        self.dtype = MODES[mode]
        self._scalers = {}

    @property
    def enabled(self):
        return self.dtype is not None

    def autocast(self):
        """Context for forwards: autocast to the chosen dtype, or nothing in fp32."""
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def full_precision(self):
        """Context for backward passes and steps: autocast switched off."""
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, enabled=False)

    def scaler(self, name):
        """The gradient scaler of network ``name`` (fp16 only; None otherwise)."""
        if self.mode != 'fp16':
            return None
        if name not in self._scalers:
            self._scalers[name] = torch.amp.GradScaler(self.device_type)
        return self._scalers[name]

    def state_dict(self):
        return {name: scaler.state_dict() for name, scaler in self._scalers.items()}

    def load_state_dict(self, state):
        for name, scaler_state in (state or {}).items():
            scaler = self.scaler(name)
            if scaler is not None:
                scaler.load_state_dict(scaler_state)




FUSED_OPTIMIZERS = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW)


def use_fused_step(optimizer):
    """Use the fused kernels of an SGD/Adam/AdamW optimiser; True when it now has them.

    A fused step reads ``optimizer.found_inf`` (a device flag) and skips itself
    when it is set, momentum, Adam moments and step counts included; this is how
    GradScaler steps it without a host synchronisation. Other optimisers
    (RMSprop, torchreid's RAdam), differentiable ones, SGD with dampening, and
    parameters the fused kernels do not cover (not floating point, or on a device
    without them) are left as they are: the engine then reads its skip flag on the
    host. Idempotent; call again after ``load_state_dict``, which restores the
    saved groups' flags and the saved state's memory layout.

    SGD's momentum buffers are made here, as zeros: fused SGD leaves the buffers it
    creates on a skipped first step unwritten, and cannot step a group whose
    parameters only partly have buffers (after ``fixbase_epoch``). With no
    dampening, a zero buffer's first update equals the unfused first step (the
    gradient itself).
    """
    if not isinstance(optimizer, FUSED_OPTIMIZERS):
        return False
    groups = optimizer.param_groups
    params = [p for group in groups for p in group['params']]
    if not params or any(group.get('differentiable') for group in groups) or (
            isinstance(optimizer, torch.optim.SGD) and any(g['dampening'] for g in groups)):
        return False
    if not all(p.is_floating_point() and _has_fused_kernels(type(optimizer), p.device)
               for p in params):
        return False
    for group in groups:
        group['fused'], group['foreach'] = True, False
        if isinstance(optimizer, torch.optim.SGD) and group['momentum']:
            for p in group['params']:
                optimizer.state[p].setdefault('momentum_buffer', torch.zeros_like(p))
    optimizer._step_supports_amp_scaling = True  # what the constructor sets with fused=True
    for p, state in optimizer.state.items():
        for key, value in state.items():
            if key == 'step' and torch.is_tensor(value):  # fused kernels count on the device
                state[key] = value.to(p.device, torch.float32)
            elif torch.is_tensor(value) and value.shape == p.shape and value.stride() != p.stride():
                state[key] = torch.empty_like(p).copy_(value)  # fused kernels need p's layout
    return True


@functools.lru_cache(maxsize=None)
def _has_fused_kernels(optimizer_class, device):
    """Whether this torch has ``optimizer_class``'s fused kernels on ``device`` (one tiny step)."""
    param = torch.zeros(1, device=device, requires_grad=True)
    param.grad = torch.zeros_like(param)
    try:
        optimizer_class([param], lr=0.1, fused=True).step()
    except (RuntimeError, TypeError, ValueError):
        return False
    return True


def step_unless(optimizer, skip):
    """``optimizer.step()`` unless the device flag ``skip`` is set (fused optimisers only)."""
    optimizer.grad_scale, optimizer.found_inf = None, skip.float()
    try:
        optimizer.step()
    finally:
        del optimizer.grad_scale, optimizer.found_inf


def poison_gradients(optimizers, skip):
    """Make every gradient NaN where the device flag ``skip`` is set (unchanged otherwise)."""
    grads = [p.grad for o in optimizers for group in o.param_groups for p in group['params']
             if p.grad is not None]
    if grads:
        torch._foreach_mul_(grads, torch.where(skip, float('nan'), 1.0).to(grads[0].dtype))


def is_fused(optimizer):
    return all(group.get('fused') for group in optimizer.param_groups)
