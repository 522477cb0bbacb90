import pytest
import torch
import torch.nn as nn
from torchreid.reid.utils import open_all_layers

from plugins.nn.heads import BNNeck, ReIDHead, convert_sync_batchnorm


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


def _sync_neck_rank(rank, world, init_file, x, grad_out, out_file):
    """One rank of the SyncBN test: its half of the global batch through a synced BNNeck."""
    import torch.distributed as dist
    dist.init_process_group('gloo', init_method='file://' + init_file, rank=rank, world_size=world)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), BNNeck(4))
    model = convert_sync_batchnorm(model).train()
    local = x.chunk(world)[rank]
    out = model(local)
    again = model[1].batch_normalise(model[0](local))  # API-Net's neck features: no second update
    out.backward(grad_out.chunk(world)[rank])
    torch.save({'out': out.detach(), 'again': again.detach(), 'grad_w': model[1].weight.grad,
                'grad_b': model[1].bias.grad, 'mean': model[1].running_mean,
                'var': model[1].running_var, 'tracked': model[1].num_batches_tracked,
                'linear_grad': model[0].weight.grad}, out_file.format(rank))
    dist.destroy_process_group()


def test_sync_bn_keeps_the_bnneck_and_normalises_it_over_the_global_batch(tmp_path):
    """``train.sync_bn``: the BNNeck stays a BNNeck (frozen bias, one statistics update per
    step) and two ranks' halves are normalised like one process's global batch."""
    x, grad_out = torch.randn(8, 4) * 3 + 1, torch.randn(8, 4)
    torch.multiprocessing.spawn(_sync_neck_rank, args=(2, str(tmp_path / 'init'), x, grad_out,
                                                       str(tmp_path / 'rank{}.pt')), nprocs=2)
    torch.manual_seed(0)
    single = nn.Sequential(nn.Linear(4, 4), BNNeck(4)).train()
    out = single(x)
    out.backward(grad_out)
    ranks = [torch.load(str(tmp_path / 'rank{}.pt'.format(r))) for r in range(2)]
    torch.testing.assert_close(torch.cat([r['out'] for r in ranks]), out.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat([r['again'] for r in ranks]), out.detach(), atol=1e-5, rtol=1e-5)
    for r in ranks:
        assert r['grad_b'] is None and r['tracked'] == 1
        torch.testing.assert_close(r['mean'], single[1].running_mean, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(r['var'], single[1].running_var, atol=1e-5, rtol=1e-5)
    # each rank holds its share of the global-batch gradient; averaging (x2 ranks / 2) gives it
    torch.testing.assert_close(sum(r['grad_w'] for r in ranks), single[1].weight.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(sum(r['linear_grad'] for r in ranks), single[0].weight.grad,
                               atol=1e-5, rtol=1e-4)


def test_sync_bn_conversion_keeps_necks_and_converts_the_other_batchnorms():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Sequential(BNNeck(4)))
    model = convert_sync_batchnorm(model)
    assert type(model[1]) is nn.SyncBatchNorm
    assert type(model[2][0]) is BNNeck and model[2][0].sync and not model[2][0].bias.requires_grad
