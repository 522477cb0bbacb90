"""The vectorised ReID losses equal torchreid's, in value and gradient."""
import pytest
import torch
from torchreid.reid.losses import CrossEntropyLoss, TripletLoss

from plugins.nn.losses import BatchHardTriplet, CrossEntropyLabelSmooth


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



def reid_like_features(batch=64, dim=2048, seed=0):
    """Post-ReLU pooled features with norms near 18 and close distances, as a ReID trunk's."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(batch // 4, dim, generator=g).repeat_interleave(4, 0)
    return (base + 0.3 * torch.rand(batch, dim, generator=g)) * 0.6, torch.arange(batch) // 4


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_triplet_mining_under_autocast_equals_fp32(dtype):
    """autocast would run the distance product in bf16/fp16 (errors above the 0.3 margin)."""
    features, pids = reid_like_features()
    expected = BatchHardTriplet(0.3)(features, pids)
    with torch.autocast('cpu', dtype=dtype):
        loss = BatchHardTriplet(0.3)(features, pids)
        product = features @ features.t()  # what autocast makes of the distance product
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)
    error = (product.float() - features @ features.t()).abs().max()
    assert error > (1.0 if dtype == torch.bfloat16 else 0.05)  # the case is a real one
