"""Mixed precision (``train.amp``): autocast for forwards, a gradient scaler where fp16 needs one.

``'bf16'`` keeps fp32's exponent range, so it needs no loss scaling; ``'fp16'``
gets one ``torch.amp.GradScaler`` per optimiser (the main network's and each
hook network's: a critic or discriminator step is scaled and skipped on
overflow independently). ``''`` (the default) is full fp32.
"""
import contextlib

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
