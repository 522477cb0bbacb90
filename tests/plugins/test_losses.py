"""The vectorised ReID losses equal torchreid's, in value and gradient."""
import pytest
import torch
from torchreid.reid.losses import CrossEntropyLoss, TripletLoss

from plugins.losses import BatchHardTriplet, CrossEntropyLabelSmooth


def grads_of(loss_fn, x, *args):
    x = x.clone().requires_grad_(True)
    loss = loss_fn(x, *args)
    loss.backward()
    return loss.detach(), x.grad


@pytest.mark.parametrize('smooth', [True, False])
def test_cross_entropy_equals_the_host(smooth):
    torch.manual_seed(0)
    logits, targets = torch.randn(16, 11) * 3, torch.randint(0, 11, (16,))
    host = CrossEntropyLoss(11, use_gpu=False, label_smooth=smooth)
    ours = CrossEntropyLabelSmooth(0.1 if smooth else 0.0)
    (lh, gh), (lo, go) = grads_of(host, logits, targets), grads_of(ours, logits, targets)
    torch.testing.assert_close(lo, lh, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(go, gh, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize('margin', [0.3, 1.0])
def test_batch_hard_triplet_equals_the_host(margin):
    torch.manual_seed(1)
    feats = torch.randn(24, 32)
    pids = torch.arange(24) // 4
    pids = pids[torch.randperm(24)]  # identities scattered through the batch
    (lh, gh), (lo, go) = (grads_of(TripletLoss(margin), feats, pids),
                          grads_of(BatchHardTriplet(margin), feats, pids))
    assert lh > 0
    torch.testing.assert_close(lo, lh, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(go, gh, rtol=1e-5, atol=1e-6)


def test_triplet_ties_and_duplicates_match_the_host():
    torch.manual_seed(2)
    base = torch.randn(6, 8)
    feats = torch.cat([base, base[:2]])  # exact duplicates: tied and zero distances
    pids = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1])
    (lh, gh), (lo, go) = (grads_of(TripletLoss(0.3), feats, pids),
                          grads_of(BatchHardTriplet(0.3), feats, pids))
    torch.testing.assert_close(lo, lh)
    torch.testing.assert_close(go, gh)

