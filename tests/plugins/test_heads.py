import pytest
import torch
import torch.nn as nn
from torchreid.reid.utils import open_all_layers

from plugins.heads import BNNeck, ReIDHead


def test_bnneck_recomputation_matches_forward_and_keeps_running_stats():
    neck = BNNeck(4).train()
    x = torch.randn(6, 4)
    out = neck(x)
    stats = (neck.running_mean.clone(), neck.running_var.clone())
    assert torch.allclose(neck.batch_normalise(x), out, atol=1e-6)
    assert torch.equal(neck.running_mean, stats[0]) and torch.equal(neck.running_var, stats[1])
    neck.eval()
    assert torch.equal(neck.batch_normalise(x), neck(x))
    assert torch.allclose(neck(x), nn.functional.batch_norm(
        x, neck.running_mean, neck.running_var, neck.weight, neck.bias, eps=neck.eps))


def test_bnneck_bias_is_a_counted_parameter_that_never_moves():
    """Counted like the official ``requires_grad=False`` bias, frozen even after ``open_all_layers``."""
    holder = nn.Module()
    holder.neck = BNNeck(4)
    holder.neck.bias.data.fill_(0)
    assert [name for name, _ in holder.named_parameters()] == ['neck.weight', 'neck.bias']
    open_all_layers(holder)  # what torchreid's engine does every epoch
    optimizer = torch.optim.Adam(holder.parameters(), lr=0.1, weight_decay=5e-4)
    for _ in range(3):
        optimizer.zero_grad()
        (holder.neck(torch.randn(8, 4)) * torch.arange(4.0)).sum().backward()
        optimizer.step()
    assert holder.neck.bias.grad is None
    assert torch.equal(holder.neck.bias, torch.zeros(4))
    assert not torch.equal(holder.neck.weight, torch.ones(4))


@pytest.mark.parametrize('eval_feature', ['pooled', 'bnneck'])
def test_head_follows_the_torchreid_output_contract(eval_feature):
    torch.manual_seed(0)
    maps = torch.randn(5, 8, 3, 2)
    pooled = maps.mean((2, 3))
    softmax = ReIDHead(8, 7, 'softmax', classifier_bias=False, eval_feature=eval_feature)
    assert softmax(maps).shape == (5, 7)
    assert softmax.classifier[1].bias is None
    triplet = ReIDHead(8, 7, 'triplet', eval_feature=eval_feature)
    logits, feature = triplet(maps)
    assert logits.shape == (5, 7) and torch.allclose(feature, pooled, atol=1e-6)
    triplet.eval()
    expected = triplet.neck(pooled) if eval_feature == 'bnneck' else pooled
    assert torch.allclose(triplet(maps), expected, atol=1e-6)


def test_head_rejects_unknown_loss_and_eval_feature():
    with pytest.raises(KeyError, match="Unsupported loss: 'arcface'"):
        ReIDHead(8, 7, 'arcface')
    with pytest.raises(ValueError, match='eval_feature'):
        ReIDHead(8, 7, eval_feature='after')
