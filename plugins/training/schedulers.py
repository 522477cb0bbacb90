"""Learning-rate schedules: torchreid's, optionally after a linear warm-up.

torchreid 1.4 has no warm-up, which recipes trained with Adam and a triplet
term rely on (RGA: 20 epochs from 8e-6 to 8e-4, then x0.5 at 80, 120, ...;
BoT: 10 epochs). ``train.warmup_epochs`` adds it in front of any of the host's
schedules; milestones stay absolute epochs, as in those recipes.
"""
import torch
from torchreid.reid import optim as host_optim

__all__ = ['build_lr_scheduler']


def build_lr_scheduler(optimizer, lr_scheduler='single_step', stepsize=1, gamma=0.1, max_epoch=1,
                       warmup_epochs=0, warmup_factor=0.01):
    """torchreid's ``build_lr_scheduler``, plus an optional linear warm-up.

    During the first ``warmup_epochs`` epochs the rate grows linearly from
    ``warmup_factor * lr`` to ``lr`` (per epoch, like torchreid's schedules:
    ``lr_e = lr * (f + (1 - f) * e / warmup_epochs)``); the host schedule runs
    underneath from epoch 0, so a 'multi_step' milestone at 80 still decays at 80.
    """
    scheduler = host_optim.build_lr_scheduler(optimizer, lr_scheduler=lr_scheduler,
                                              stepsize=stepsize, gamma=gamma, max_epoch=max_epoch)
    if not warmup_epochs:
        return scheduler
    if not isinstance(warmup_epochs, int) or warmup_epochs < 0:
        raise ValueError('train.warmup_epochs must be a non-negative integer, got {!r}'.format(
            warmup_epochs))
    if not 0 < warmup_factor <= 1:
        raise ValueError('train.warmup_factor must lie in (0, 1], got {!r}'.format(warmup_factor))
    warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=warmup_factor,
                                               end_factor=1.0, total_iters=warmup_epochs)
    return torch.optim.lr_scheduler.ChainedScheduler([scheduler, warmup], optimizer=optimizer)
