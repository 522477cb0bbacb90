"""torchreid's two ReID losses, vectorised on the device.

Same values and gradients as ``torchreid.losses.CrossEntropyLoss`` and
``TripletLoss`` (tested against them), without their per-step costs: the host's
cross-entropy builds its one-hot targets on the CPU and copies them to the GPU
every step, and its triplet loss mines each anchor in a Python loop.
"""
import torch
import torch.nn.functional as F

from plugins.nn.modules import fp32


class CrossEntropyLabelSmooth(torch.nn.Module):
    """Label-smoothed cross-entropy (Szegedy et al. 2016), targets ``(1 - eps) y + eps / C``.

    Args:
        eps (float): smoothing; torchreid's ``label_smooth=True`` is 0.1, False is 0.
    """

    def __init__(self, eps=0.1):
        super().__init__()
        self.eps = eps

    def forward(self, logits, targets):
        return F.cross_entropy(logits, targets, label_smoothing=self.eps)


def pairwise_euclidean(features):
    """Euclidean distances as torchreid computes them: ``sqrt(clamp(|x|^2 + |y|^2 - 2 x.y, 1e-12))``.

    Always in fp32 (or the features' wider type), autocast or not: under bf16 the
    product's error (about 1.7 on distances near 18) exceeds a 0.3 margin and
    changes which positive and negative are hardest.
    """
    with fp32(features.device.type):
        features = features.float() if features.dtype in (torch.float16, torch.bfloat16) else features
        sq = features.pow(2).sum(dim=1, keepdim=True)
        dist = torch.addmm(sq + sq.t(), features, features.t(), beta=1, alpha=-2)
        return dist.clamp(min=1e-12).sqrt()


class BatchHardTriplet(torch.nn.Module):
    """Batch-hard triplet loss (Hermans et al. 2017): for each anchor its farthest positive
    and nearest negative in the batch, ``mean(max(0, d_ap - d_an + margin))``.

    ``amax``/``amin`` spread the gradient over tied distances exactly like the host's
    per-row ``max()``/``min()``.
    """

    def __init__(self, margin=0.3):
        super().__init__()
        self.margin = margin

    def forward(self, features, targets):
        dist = pairwise_euclidean(features)
        same = targets.view(-1, 1) == targets.view(1, -1)
        dist_ap = dist.masked_fill(~same, float('-inf')).amax(dim=1)
        dist_an = dist.masked_fill(same, float('inf')).amin(dim=1)
        return F.relu(dist_ap - dist_an + self.margin).mean()
