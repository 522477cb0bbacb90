"""CASN's attention losses, differentiable through Grad-CAM (second-order gradients).

Both losses build Grad-CAM maps from gradients taken with ``create_graph=True``,
so a loss on the map trains the network that produced it. Scores are computed
per image without coupling through batch statistics
(:meth:`~projects.casn.model.CASNNet.class_scores`), so one backward of the
summed scores gives every image's own map, for the whole batch at once.
"""
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from plugins import batchnorm_stats_frozen, cam_from_gradients, logits_of, normalise_maps


def differentiable_cam(maps, scores):
    """Min-max normalised Grad-CAM (B, h, w) of per-image ``scores`` (B,) on ``maps``; in the graph."""
    grads, = torch.autograd.grad(scores.sum(), maps, create_graph=True)
    return normalise_maps(cam_from_gradients(maps, grads))


def soft_mask(cam, alpha, beta):
    """``T(M) = sigmoid(alpha * (M - beta))`` (paper Sec. 3.1; GAIN's soft threshold)."""
    return torch.sigmoid(alpha * (cam - beta))


def true_class_probability(logits, pids):
    """Softmax probability of each image's identity; PCB's part logits are averaged over parts."""
    parts = logits if isinstance(logits, (list, tuple)) else [logits]
    return torch.stack([F.softmax(p, 1).gather(1, pids[:, None]).squeeze(1) for p in parts]).mean(0)


def identification_attention_loss(model, images, maps, pids, alpha=10.0, beta=0.5):
    """``L_ia``: the true class's score on the image with its attended region erased (paper eq. 2).

    Grad-CAM ``M_n`` of the ground-truth class on the last conv maps, upsampled
    to the image, soft mask ``T(M_n)``, masked image ``I_n * (1 - T(M_n))``, and
    the softmax probability of the true class on it (the paper writes a raw score,
    which is unbounded below; the probability is what GAIN uses). Minimising it
    makes the attention cover everything that identifies the person. The masked
    batch runs with batch statistics but leaves BN running estimates untouched.

    Returns ``(loss, mask)``, the mask (B, 1, H, W) in (0, 1).
    """
    scores = model.class_scores(maps).gather(1, pids[:, None]).squeeze(1)
    cam = differentiable_cam(maps, scores)
    mask = soft_mask(F.interpolate(cam[:, None], size=images.shape[-2:], mode='bilinear',
                                   align_corners=False), alpha, beta)
    with batchnorm_stats_frozen(model):
        masked_logits = logits_of(model(images * (1 - mask)))
    return true_class_probability(masked_logits, pids).mean(), mask


def threshold_boxes(cams, threshold):
    """Per map, the box (x1, y1, x2, y2) in cell units around the cells above ``threshold``.

    A map with no cell above it keeps the whole map. Not differentiable (indices).
    """
    _, h, w = cams.shape
    above = cams.detach() > threshold
    empty = ~above.flatten(1).any(1, keepdim=True)
    rows, cols = above.any(2) | empty, above.any(1) | empty
    r = torch.arange(h, device=cams.device)
    c = torch.arange(w, device=cams.device)
    y1 = torch.where(rows, r, h).min(1).values
    y2 = torch.where(rows, r, -1).max(1).values + 1
    x1 = torch.where(cols, c, w).min(1).values
    x2 = torch.where(cols, c, -1).max(1).values + 1
    return torch.stack([x1, y1, x2, y2], 1).to(cams.dtype)


def aligned_attention(cams, threshold, size):
    """Keep the cells above ``threshold``, crop each map to them and resize to ``size`` (in the graph).

    The span from the crop's first cell centre to its last is cut into ``size``
    equal bins, and each output cell is the mean of 2 x 2 bilinear samples placed
    evenly inside its bin (``roi_align``, ``aligned=True``, sampling ratio 2). Every
    sample lies between the crop's cell centres, so nothing outside the crop
    leaks in; a one-cell crop gives that cell's value everywhere.
    """
    kept = cams * (cams > threshold).to(cams.dtype)
    corners = threshold_boxes(cams, threshold)
    boxes = torch.cat([corners[:, :2] + 0.5, corners[:, 2:] - 0.5], 1)  # first/last cell centres
    index = torch.arange(len(cams), device=cams.device, dtype=cams.dtype)[:, None]
    return roi_align(kept[:, None], torch.cat([index, boxes], 1), output_size=size,
                     spatial_scale=1.0, sampling_ratio=2, aligned=True)[:, 0]


def siamese_attention_loss(model, maps, positive, threshold=0.5):
    """``L_sa``: L2 distance between the aligned Siamese attention maps of each positive pair.

    ``maps`` hold pairs of images ``(2i, 2i + 1)``; ``positive`` (B/2,) flags the
    pairs of one identity. Importance score ``s_i`` = the sum of the positive
    entries of image i's Siamese embedding, the neurons that drive the
    verification prediction (our reading of the paper); its
    Grad-CAM on the conv maps, thresholded at ``threshold``, cropped to the region
    above it and resized to the map size, gives ``M'_i``; the loss is
    ``mean ||M'_a - M'_b||_2`` over the positive pairs (0 when there is none, still
    in the graph, so every step uses the same parameters). Consistent attention
    across two views of one person is the point of the Siamese module.
    """
    embeddings = model.siamese(model.features(maps, frozen_stats=True))
    cams = differentiable_cam(maps, F.relu(embeddings).sum(1))
    aligned = aligned_attention(cams, threshold, tuple(maps.shape[-2:]))
    distances = (aligned[0::2] - aligned[1::2]).flatten(1).norm(dim=1)
    weights = positive.to(distances.dtype)
    return (distances * weights).sum() / weights.sum().clamp_min(1)  # masked mean: no host read


def casn_attention_maps(model, images):
    """``{'identification': ..., 'siamese': ...}`` (N, h, w): the two Grad-CAM maps CASN trains.

    Identification: of each image's predicted class; Siamese: of its importance
    score. BN and dropout are in eval mode for a deterministic picture.
    """
    model.eval()
    with torch.enable_grad():
        maps = model.trunk(images).detach().requires_grad_(True)
        features = model.features(maps)
        logits = model.identity_logits(features)
        logits = logits if torch.is_tensor(logits) else torch.stack(logits).sum(0)
        identification = differentiable_cam(maps, logits.max(1).values)
        siamese = differentiable_cam(maps, F.relu(model.siamese(features)).sum(1))
    return {'identification': identification.detach(), 'siamese': siamese.detach()}
