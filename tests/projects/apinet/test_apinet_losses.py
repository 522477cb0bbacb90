"""API-Net's pair cross-entropy and score-ranking regularisation on hand-made numbers."""
import pytest
import torch
import torch.nn.functional as F
from torchreid.reid.losses import CrossEntropyLoss

from projects.apinet.losses import masked_mean, pair_cross_entropy, score_ranking_loss


def logits_from(probs):
    return torch.tensor(probs).log()


def test_ranking_loss_is_zero_when_self_beats_other_by_the_margin():
    # true classes 0 and 2; self scores 0.70 / 0.50, other scores 0.60 / 0.40: gaps 0.10 >= 0.05
    self_logits = logits_from([[0.70, 0.20, 0.10], [0.25, 0.25, 0.50]])
    other_logits = logits_from([[0.60, 0.30, 0.10], [0.30, 0.30, 0.40]])
    labels, valid = torch.tensor([0, 2]), torch.tensor([True, True])
    assert score_ranking_loss(self_logits, other_logits, labels, valid, margin=0.05).item() == 0.0


def test_ranking_loss_is_positive_otherwise():
    # gaps: 0.62 - 0.60 = 0.02 (< margin: 0.03 left), 0.40 - 0.50 = -0.10 (0.15 left)
    self_logits = logits_from([[0.62, 0.28, 0.10], [0.30, 0.30, 0.40]])
    other_logits = logits_from([[0.60, 0.30, 0.10], [0.25, 0.25, 0.50]])
    labels, valid = torch.tensor([0, 2]), torch.tensor([True, True])
    loss = score_ranking_loss(self_logits, other_logits, labels, valid, margin=0.05)
    assert loss.item() == pytest.approx((0.03 + 0.15) / 2, abs=1e-6)
    # the same as the official code's MarginRankingLoss(margin=0.05) with target 1
    p_self = F.softmax(self_logits, 1)[torch.arange(2), labels]
    p_other = F.softmax(other_logits, 1)[torch.arange(2), labels]
    official = torch.nn.MarginRankingLoss(margin=0.05)(p_self, p_other, torch.ones(2))
    assert loss.item() == pytest.approx(official.item(), abs=1e-7)
    # an invalid pair's rows do not count
    only_first = score_ranking_loss(self_logits, other_logits, labels, torch.tensor([True, False]))
    assert only_first.item() == pytest.approx(0.03, abs=1e-6)


def test_ranking_loss_pushes_self_up_and_other_down():
    self_logits = torch.zeros(1, 3, requires_grad=True)
    other_logits = torch.zeros(1, 3, requires_grad=True)
    score_ranking_loss(self_logits, other_logits, torch.tensor([1]), torch.tensor([True])).backward()
    assert self_logits.grad[0, 1] < 0 < other_logits.grad[0, 1]


def test_pair_cross_entropy_covers_the_four_logits_with_labels_l1_l2_l1_l2():
    g = torch.Generator().manual_seed(0)
    n, c = 3, 5  # 3 pairs -> self/other logits of 6 rows (anchors then partners)
    self_logits, other_logits = torch.randn(2 * n, c, generator=g), torch.randn(2 * n, c, generator=g)
    labels = torch.tensor([0, 1, 2, 1, 4, 2])  # l1 of the 3 pairs, then l2
    valid = torch.ones(2 * n, dtype=torch.bool)
    expected = F.cross_entropy(torch.cat([self_logits, other_logits]), torch.cat([labels, labels]))
    assert pair_cross_entropy(self_logits, other_logits, labels, valid).item() == pytest.approx(
        expected.item(), rel=1e-6)
    # label smoothing is torchreid's (epsilon 0.1)
    smoothed = pair_cross_entropy(self_logits, other_logits, labels, valid, label_smooth=0.1)
    host = CrossEntropyLoss(c, use_gpu=False, label_smooth=True)(
        torch.cat([self_logits, other_logits]), torch.cat([labels, labels]))
    assert smoothed.item() == pytest.approx(host.item(), rel=1e-6)
    # rows of invalid pairs are left out
    valid = torch.tensor([True, False, True] * 2)
    keep = torch.tensor([0, 2, 3, 5])
    expected = F.cross_entropy(torch.cat([self_logits[keep], other_logits[keep]]),
                               torch.cat([labels[keep], labels[keep]]))
    assert pair_cross_entropy(self_logits, other_logits, labels, valid).item() == pytest.approx(
        expected.item(), rel=1e-6)


def test_masked_mean_without_any_valid_row_is_zero_and_differentiable():
    values = torch.randn(4, requires_grad=True)
    out = masked_mean(values, torch.zeros(4, dtype=torch.bool))
    out.backward()
    assert out.item() == 0.0 and torch.equal(values.grad, torch.zeros(4))
