"""Pair construction inside a PK batch, and API-Net's two pair losses.

Pairs (paper Sec. 3, "Pair Construction"): every image of the batch anchors two
pairs, one with its nearest image of the same identity (intra pair) and one
with its nearest image of another identity (inter pair), nearest by Euclidean
distance between the current features. A batch of B images gives 2B pairs,
anchor first. Distances are computed on detached features (mining picks
indices; gradients flow through the features the pairs then gather).

* :func:`mine_pairs` is the training implementation: one distance matrix and a
  masked argmin, all on the features' device (no host round trip, no Python
  loop over the batch).
* :func:`reference_pairs_loop` is the oracle: the same distance matrix, then a
  plain per-image Python loop. The tests require identical outputs and the
  ``apinet`` benchmark times both.

Ties go to the lowest batch index (as ``argmin`` in the official code). An
anchor with no candidate (no other image of its identity in the batch, or no
image of another identity) gets an **invalid** pair: ``valid`` is False, its
partner is the anchor itself, and the losses leave it out (masked means). The
official code instead pairs such an anchor with image 0 silently. PK batches
with K >= 2 never produce invalid pairs; the engine logs their count as
``pairs_dropped``.
"""
from collections import namedtuple

import torch
import torch.nn.functional as F

from plugins import fp32

Pairs = namedtuple('Pairs', ['anchor', 'partner', 'valid'])
Pairs.__doc__ = """2B pairs of batch indices: rows ``0..B-1`` intra, ``B..2B-1`` inter.

``anchor[r] = r mod B``; ``partner[r]`` the chosen image (the anchor itself when
``valid[r]`` is False). All three are tensors on the features' device.
"""


def pairwise_sq_distances(features):
    """Squared Euclidean distances ``|f_i|^2 + |f_j|^2 - 2 f_i.f_j`` (B, B), detached, float32+.

    Clamped at 0 against rounding. Computed in fp32 even under autocast (whose
    bf16 product would choose other partners). Shared by :func:`mine_pairs` and
    :func:`reference_pairs_loop`, so both select from identical values.
    """
    f = features.detach()
    if f.dtype in (torch.float16, torch.bfloat16):
        f = f.float()
    with fp32(f.device.type):
        sq = (f * f).sum(dim=1)
        return (sq[:, None] + sq[None, :] - 2.0 * (f @ f.t())).clamp_min_(0)


def select_pairs(dist, pids):
    """Intra and inter pairs from a (B, B) distance matrix by masked argmin (vectorised)."""
    n = dist.shape[0]
    same = pids[:, None] == pids[None, :]
    intra_ok = same ^ torch.eye(n, dtype=torch.bool, device=dist.device)  # same identity, j != i
    inf = float('inf')
    intra = dist.masked_fill(~intra_ok, inf).argmin(dim=1)  # first minimum: lowest index on ties
    inter = dist.masked_fill(same, inf).argmin(dim=1)
    valid = torch.cat([intra_ok.any(dim=1), ~same.all(dim=1)])
    index = torch.arange(n, device=dist.device)
    anchor = torch.cat([index, index])
    return Pairs(anchor, torch.where(valid, torch.cat([intra, inter]), anchor), valid)


def mine_pairs(features, pids):
    """2B pairs for a batch of (B, D) ``features`` with identities ``pids`` (see the module doc)."""
    if features.dim() != 2 or pids.shape != features.shape[:1]:
        raise ValueError('mine_pairs needs (B, D) features and (B,) pids, got {} and {}'.format(
            tuple(features.shape), tuple(pids.shape)))
    return select_pairs(pairwise_sq_distances(features), pids.to(features.device))


def reference_pairs_loop(features, pids):
    """Oracle for :func:`mine_pairs`: the same distances, then a per-image Python loop.

    Used by the tests (outputs must be identical) and by the ``apinet`` benchmark.
    """
    return reference_select_loop(pairwise_sq_distances(features), pids)


def reference_select_loop(dist, pids):
    """Oracle for :func:`select_pairs`: for each anchor i, scan j = 0..B-1 in Python.

    Keeps the closest same-identity j != i and the closest other-identity j; a
    strict ``<`` keeps the lowest index on ties; no candidate -> invalid pair.
    """
    rows = dist.tolist()
    labels = pids.tolist()
    n = len(labels)
    intra, inter = [None] * n, [None] * n
    for i in range(n):
        row = rows[i]
        for j in range(n):
            if labels[j] == labels[i]:
                if j != i and (intra[i] is None or row[j] < row[intra[i]]):
                    intra[i] = j
            elif inter[i] is None or row[j] < row[inter[i]]:
                inter[i] = j
    anchor = list(range(n)) * 2
    partner = [a if p is None else p for a, p in zip(anchor, intra + inter)]
    valid = [p is not None for p in intra + inter]
    device = dist.device
    return Pairs(torch.tensor(anchor, device=device), torch.tensor(partner, device=device),
                 torch.tensor(valid, device=device))


def masked_mean(values, mask):
    """Mean of ``values`` where ``mask`` is True; 0 (still in the graph) when none is."""
    return values.masked_fill(~mask, 0).sum() / mask.sum().clamp_min(1).to(values.dtype)


def pair_cross_entropy(self_logits, other_logits, labels, valid, label_smooth=0.0):
    """Cross-entropy over the four attentive logits of every valid pair (paper Sec. 3, "Training").

    ``self_logits``/``other_logits`` (2N, C) as :meth:`APINet.pair_logits` returns
    them, ``labels`` (2N,) the identity of each row's image (anchors then
    partners), ``valid`` (2N,). Every valid pair contributes its four rows
    (labels l1, l2, l1, l2); the mean is over those rows. ``label_smooth`` is
    torchreid's (and torch's) label smoothing epsilon; the paper uses 0.
    """
    logits = torch.cat([self_logits, other_logits])
    per_row = F.cross_entropy(logits, torch.cat([labels, labels]), reduction='none',
                              label_smoothing=float(label_smooth))
    return masked_mean(per_row, torch.cat([valid, valid]))


def true_class_scores(logits, labels):
    """Softmax score of each row's true class, ``p(c_i)``."""
    return F.softmax(logits, dim=1).gather(1, labels[:, None]).squeeze(1)


def score_ranking_loss(self_logits, other_logits, labels, valid, margin=0.05):
    """Score-ranking regularisation (paper Sec. 3, eq. 7).

    ``max(0, p_other(c_i) - p_self(c_i) + margin)`` per image of every valid
    pair, averaged: the true-class score of the feature activated by the image's
    own gate must beat the one activated by its partner's gate by ``margin``
    (the official code's ``MarginRankingLoss(margin=0.05)`` with target 1).
    """
    per_row = F.relu(true_class_scores(other_logits, labels)
                     - true_class_scores(self_logits, labels) + margin)
    return masked_mean(per_row, valid)
