"""Grad-CAM maths, differentiable: drawn by the visualisation tools and trained on by
attention losses (CASN)."""
import torch


def cam_from_gradients(activations, gradients):
    """Grad-CAM's map from a layer's activations A and the score's gradients dS/dA, (N, h, w).

    ``relu(sum_k w_k A_k)`` with ``w_k = mean_{x,y} dS/dA_k(x, y)`` (Selvaraju et al.,
    ICCV 2017, eqs. 1-2). Differentiable: with gradients taken with
    ``create_graph=True`` a loss on the map trains the network (CASN).
    """
    weights = gradients.mean(dim=(2, 3), keepdim=True)
    return torch.relu((weights * activations).sum(dim=1))


def normalise_maps(maps):
    """Min-max normalise each (h, w) map of ``maps`` (N, h, w) to [0, 1]; constant maps -> 0 (differentiable)."""
    flat = maps.flatten(1)
    lo = flat.min(dim=1, keepdim=True).values
    hi = flat.max(dim=1, keepdim=True).values
    span = hi - lo
    out = torch.where(span > 0, (flat - lo) / span.clamp_min(1e-12), torch.zeros_like(flat))
    return out.view_as(maps)
