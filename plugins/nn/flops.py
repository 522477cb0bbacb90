"""Multiply-accumulates that count what runs (``torch.utils.flop_counter``).

torchreid's ``compute_model_complexity`` hooks layers and counts them as they are
called, so it misses matrix products and weights read without calling their
layer (RGA's relation products, for one). The dispatcher-level counter sees
every convolution, matrix product and attention kernel that runs.
"""
import torch
from torch.utils.flop_counter import FlopCounterMode


def count_macs(model, input_size):
    """Multiply-accumulates of one eval-mode forward of ``model`` on an input of
    ``input_size`` (for example ``(1, 3, 256, 128)``); the training mode is restored.

    ``flop_counter`` counts a multiply-accumulate as two FLOPs; this returns MACs,
    the unit of torchreid's figure and of most ReID papers.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            model(torch.zeros(input_size, device=device))
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2
