"""Distributed training under torchrun (2 gloo processes on CPU) equals one process
on the same global batch; the rank-sharded samplers keep the batch composition."""
import os
import re
import subprocess
import sys

import pytest
import torch

from plugins.training.checkpoint import load_checkpoint
from plugins.distributed import BatchShard, GradientAverager, local_device_index
from plugins.data.samplers import PKSampler, PairwiseSampler

from tests.helpers import REPO, TINY_SYNTHREID

PROBE = os.path.join(REPO, 'tests', 'plugins', 'ddp_probe_train.py')
CONFIG = os.path.join(REPO, 'configs', 'baselines', 'resnet50_synthreid.yaml')


def _data_source(num_pids=12, per_pid=6):
    return [('img{}_{}.jpg'.format(p, i), p, i % 3, 0) for p in range(num_pids) for i in range(per_pid)]


@pytest.mark.parametrize('world', [2, 4])
def test_pk_shards_give_whole_disjoint_identities_and_rebuild_the_global_batch(world):
    source = _data_source()
    batch = 16
    shards = [BatchShard(PKSampler(source, batch_size=batch, num_instances=4, seed=3), batch,
                         seed=3, rank=r, num_replicas=world) for r in range(world)]
    single = PKSampler(source, batch_size=batch, num_instances=4, seed=3)
    for epoch in (0, 1):
        for s in shards:
            s.set_epoch(epoch)
        single.set_epoch(epoch)
        parts = [list(s) for s in shards]
        assert len({len(p) for p in parts}) == 1 and len(parts[0]) == len(shards[0])
        local = batch // world
        expected = list(single)
        for b in range(len(parts[0]) // local):
            pieces = [p[b * local:(b + 1) * local] for p in parts]
            assert sum(pieces, []) == expected[b * batch:(b + 1) * batch]  # the global batch
            pids = [{source[i][1] for i in piece} for piece in pieces]
            assert all(len(p) == local // 4 for p in pids)  # whole identities of K=4 images
            assert not set.intersection(*pids)  # disjoint between ranks
    assert parts != [list(s) for s in shards]  # the next epoch reshuffles


def test_pairwise_shards_keep_whole_pairs():
    source = _data_source()
    single = list(PairwiseSampler(source, batch_size=8, seed=1))
    shards = [list(BatchShard(PairwiseSampler(source, batch_size=8, seed=1), 8, seed=1, rank=r,
                              num_replicas=2)) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == len(single) // 2
    for b in range(len(single) // 8):  # rank 0 has the first 2 pairs of each batch, rank 1 the rest
        assert shards[0][4 * b:4 * b + 4] + shards[1][4 * b:4 * b + 4] == single[8 * b:8 * b + 8]


def test_host_random_sampler_is_drawn_identically_on_every_rank():
    source = _data_source()
    from torchreid.reid.data.sampler import build_train_sampler as host_build
    shards = [BatchShard(host_build(source, 'RandomSampler', batch_size=8), 8, seed=5, rank=r,
                         num_replicas=2) for r in range(2)]
    torch.manual_seed(0)
    a = list(shards[0])
    torch.manual_seed(1)  # a different training RNG state must not change the order
    b = list(shards[1])
    assert sorted(a + b) == sorted(set(a + b)) and len(a) == len(b) == len(source) // 8 * 4


def _train(tmp_path, name, launcher, extra=()):
    save = tmp_path / name
    opts = ['--root', str(tmp_path / 'data'), *TINY_SYNTHREID, 'model.name', 'ddp_probe_net',
            'model.pretrained', 'False', 'engine.name', 'ddp_probe', 'loss.name', 'triplet',
            'loss.triplet.weight_x', '1.0', 'sampler.train_sampler', 'PKSampler',
            'sampler.num_instances', '2', 'train.batch_size', '8', 'train.optim', 'sgd',
            'train.lr', '0.05', 'train.max_epoch', '2', 'data.transforms', '[]',
            'data.workers', '0', 'data.height', '32', 'data.width', '16',
            'train.print_freq', '1', 'use_gpu', 'False', 'data.save_dir', str(save), *extra]
    proc = subprocess.run([*launcher, PROBE, '--config-file', CONFIG, *opts], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return save, proc.stdout + proc.stderr


def test_two_gloo_processes_train_like_one_process_on_the_global_batch(tmp_path):
    single, _ = _train(tmp_path, 'single', [sys.executable])
    torchrun = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2']
    ddp, out = _train(tmp_path, 'ddp', torchrun)
    assert len(re.findall(r'Rank-1\s*:', out)) == 1  # rank 0 alone evaluates
    assert 'Distributed: 2 processes, global batch 8' in out
    for net in ('model', 'critic', 'discriminator'):
        a = load_checkpoint(str(single / net / 'model.pth.tar-2'))['state_dict']
        b = load_checkpoint(str(ddp / net / 'model.pth.tar-2'))['state_dict']
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=net + '.' + key)
    torch.manual_seed(0)  # the probe engine's initialisation of the hook networks
    initial = {'critic': torch.nn.Linear(16, 1), 'discriminator': torch.nn.Linear(16, 1)}
    for net, module in initial.items():
        trained = load_checkpoint(str(single / net / 'model.pth.tar-2'))['state_dict']
        assert not torch.equal(trained['weight'], module.weight.detach())  # they did train
    assert sorted(os.listdir(ddp / 'model')) == ['model.pth.tar-2']  # one writer


@pytest.mark.parametrize('local_rank, visible, expected', [(0, 8, 0), (3, 8, 3), (3, 1, 0), (0, 1, 0)])
def test_each_rank_takes_its_gpu_or_the_only_one_it_sees(local_rank, visible, expected):
    assert local_device_index(local_rank, visible) == expected


def test_more_ranks_than_visible_gpus_is_named():
    with pytest.raises(RuntimeError, match=r'LOCAL_RANK=3 but this process sees 2 GPU'):
        local_device_index(3, 2)


def test_gradients_of_parameters_unused_by_a_step_stay_none():
    """Without torchrun the averager does nothing; frozen and unused parameters keep None."""
    averager = GradientAverager()
    used, unused = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    (used * 3).sum().backward()
    assert averager([used, unused]) is None
    assert torch.equal(used.grad, torch.full((2,), 3.0)) and unused.grad is None


def _averager_rank(rank, world, init_file, out_file):
    import torch.distributed as dist
    dist.init_process_group('gloo', init_method='file://' + init_file, rank=rank, world_size=world)
    averager = GradientAverager()
    shared, only_rank0, frozen = (torch.nn.Parameter(torch.ones(3)) for _ in range(3))
    frozen.requires_grad_(False)
    loss = shared.sum() * (rank + 1) + (only_rank0.sum() if rank == 0 else 0)
    loss.backward()
    mismatch = averager([shared, only_rank0, frozen])
    torch.save({'shared': shared.grad, 'only': only_rank0.grad, 'frozen': frozen.grad,
                'mismatch': bool(mismatch)}, out_file.format(rank))
    dist.destroy_process_group()


def test_gradient_averaging_over_two_gloo_ranks_flags_a_parameter_used_on_one_rank(tmp_path):
    torch.multiprocessing.spawn(_averager_rank, args=(2, str(tmp_path / 'init'),
                                                      str(tmp_path / 'rank{}.pt')), nprocs=2)
    ranks = [torch.load(str(tmp_path / 'rank{}.pt'.format(r))) for r in range(2)]
    for r in ranks:
        assert torch.equal(r['shared'], torch.full((3,), 1.5))  # (1 + 2) / 2
        assert r['frozen'] is None and r['mismatch']  # only_rank0 had a gradient on rank 0 alone
    assert torch.equal(ranks[0]['only'], torch.full((3,), 0.5)) and ranks[1]['only'] is None
