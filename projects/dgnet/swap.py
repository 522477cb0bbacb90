"""DG-Net's appearance/structure swap for ``tools/visualize.py swap``."""
import os.path as osp

import torch

from plugins import load_weights_strict

from .networks import Generator


def generator_checkpoint(weights):
    """The generator saved with E_a's checkpoint ``<run>/model/<file>``: ``<run>/generator/<file>``."""
    folder, name = osp.split(osp.abspath(weights))
    path = osp.join(osp.dirname(folder), 'generator', name)
    if not osp.isfile(path):
        raise FileNotFoundError('The DG-Net generator saved with "{}" was not found: expected "{}" '
                                '(the engine saves it next to the model checkpoint)'.format(weights, path))
    return path


@torch.no_grad()
def appearance_swap(model, weights, structures, appearances):
    """``(S, A, 3, H, W)``: image ``[i, j]`` = G(E_s(structures[i]), E_a(appearances[j])), both
    networks in eval mode as in the official ``sample``."""
    device = structures.device
    generator = load_weights_strict(Generator(), generator_checkpoint(weights)).to(device).eval()
    model.eval()
    codes = model.encode(appearances)[0]
    structure = generator.encode(structures)
    n_s, n_a = len(structures), len(appearances)
    images = generator.decode(structure.repeat_interleave(n_a, 0), codes.repeat(n_s, 1))
    return images.view(n_s, n_a, *images.shape[1:])
