"""On a GPU: every engine in fp32/bf16/fp16 with no host synchronisation inside a step,
checkpoints that load without one, resume with fewer GPUs, evaluation equal to the CPU's.

Collected by ``python -m pytest -m cuda`` (``tools/gpu_check.sh`` runs them with the
benchmark sections); skipped only where no GPU is present.
"""
import os
import subprocess
import sys

import pytest
import torch

from plugins.training.precision import Precision
from tests.helpers import REPO, amp_step
from tests.test_shipped_configs import MODEL_ENGINES, TINY, _teacher_opts

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')]


@pytest.fixture(scope='module', params=sorted(MODEL_ENGINES), ids=lambda p: '{}-{}'.format(*p))
def built_gpu_engine(request, tmp_path_factory):
    """The engine of a (model, engine) pair on the GPU, a batch, and a checkpoint of its
    untrained state."""
    from plugins.training.launch import setup_config, start_run
    path = MODEL_ENGINES[request.param]
    folder = tmp_path_factory.mktemp('gpu')
    cfg = setup_config(path, [*TINY, 'use_gpu', 'True', 'data.workers', '0',
                              'data.save_dir', str(folder / 'log'), *_teacher_opts(path, folder)],
                       root=str(folder / 'data'))
    torch.manual_seed(0)
    engine = start_run(cfg, verbose=False)
    return engine, next(iter(engine.train_loader)), engine.save_model(0, 0, str(folder / 'start'))


@pytest.fixture
def gpu_engine(built_gpu_engine):
    """The module's engine back at its untrained state, in fp32: each test starts where the
    others did (the shipped rates are for ImageNet weights; from scratch a few steps on one
    batch can drive a model to overflow, which is not what a later test checks)."""
    engine, batch, start = built_gpu_engine
    engine.resume(start)
    engine.precision = Precision('', engine.device)
    return engine, batch


@pytest.mark.parametrize('amp', ['', 'bf16', 'fp16'])
def test_a_gpu_step_never_waits_for_the_device(gpu_engine, amp):
    """``torch.cuda.set_sync_debug_mode('error')`` raises on any synchronising call in the step."""
    engine, batch = gpu_engine
    engine.precision = Precision(amp, engine.device)
    engine.set_model_mode('train')
    engine.forward_backward(batch)  # caches fill on the first step
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('error')
    try:
        log = engine.forward_backward(batch)
    finally:
        torch.cuda.set_sync_debug_mode('default')
    assert all(torch.isfinite(torch.as_tensor(v)).all() for v in log.values()) or amp == 'fp16'
    if amp:
        dtype = {'bf16': torch.bfloat16, 'fp16': torch.float16}[amp]
        amp_step(engine, batch, dtype=dtype, steps=1 if amp == 'bf16' else 12)


def test_a_gpu_checkpoint_loads_on_a_machine_without_gpus_and_resumes_on_one(gpu_engine, tmp_path):
    engine, batch = gpu_engine
    engine.set_model_mode('train')
    engine.forward_backward(batch)
    engine.save_dir = str(tmp_path)
    path = engine.save_model(0, 0, str(tmp_path))  # after epoch 1
    plain_load = ('import torch, sys; c = torch.load(sys.argv[1], weights_only=False); '
                  'print(next(iter(c["state_dict"].values())).device)')
    proc = subprocess.run([sys.executable, '-c', plain_load, path], capture_output=True, text=True,
                          env={**os.environ, 'CUDA_VISIBLE_DEVICES': ''}, cwd=REPO)
    assert proc.returncode == 0 and proc.stdout.strip() == 'cpu', proc.stderr
    ckpt = torch.load(path, weights_only=False)
    ckpt['rng'][0]['cuda'] = [ckpt['rng'][0]['cuda']] * 8  # as an older 8-GPU process saved it
    torch.save(ckpt, path)
    assert engine.resume(path) == 1  # one visible GPU: no IndexError
    engine.epoch, engine.max_epoch = 1, 2
    engine.train(print_freq=1)  # restores the RNG state, trains an epoch on the GPU


def test_gpu_evaluation_equals_the_cpu():
    from plugins.evaluation.protocol import compute_distance_matrix, evaluate_rank
    g = torch.Generator().manual_seed(0)
    q, gal = torch.randn(30, 64, generator=g), torch.randn(200, 64, generator=g)
    q_pids, g_pids = torch.randint(0, 20, (30,), generator=g), torch.randint(0, 20, (200,), generator=g)
    q_cams, g_cams = torch.zeros(30, dtype=torch.long), torch.ones(200, dtype=torch.long)
    cpu = compute_distance_matrix(q, gal, 'euclidean', device=torch.device('cpu')).cpu().numpy()
    gpu = compute_distance_matrix(q, gal, 'euclidean', device=torch.device('cuda'), chunk_rows=7).cpu().numpy()
    args = (q_pids.numpy(), g_pids.numpy(), q_cams.numpy(), g_cams.numpy())
    cmc_cpu, map_cpu = evaluate_rank(cpu, *args)[:2]
    cmc_gpu, map_gpu = evaluate_rank(gpu, *args)[:2]
    assert map_cpu == pytest.approx(map_gpu, abs=1e-4)
    assert cmc_cpu[:5] == pytest.approx(cmc_gpu[:5], abs=1e-4)


def test_gpu_re_ranking_equals_the_host_and_fits_at_market_scale():
    """Chunked re-ranking on the GPU gives the host's distances; at Market-1501 scale its
    peak device memory stays within a few GB (printed for the README)."""
    import time

    from plugins.evaluation.rerank import HOST_DISTANCE, re_ranking
    from torchreid.reid.utils import re_ranking as host_re_ranking
    g = torch.Generator().manual_seed(0)
    q, gal = torch.randn(30, 16, generator=g), torch.randn(90, 16, generator=g)
    expected = host_re_ranking(*(HOST_DISTANCE(a, b).numpy() for a, b in ((q, gal), (q, q), (gal, gal))))
    ours = re_ranking(q, gal, device='cuda').numpy()
    assert abs(ours - expected).max() < 1e-5
    q, gal = torch.randn(3368, 2048, generator=g), torch.randn(15913, 2048, generator=g)
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    re_ranking(q, gal, device='cuda')
    seconds, peak = time.perf_counter() - start, torch.cuda.max_memory_allocated() / 2 ** 30
    figure = 'GPU re-ranking at Market-1501 scale on {}: {:.1f} s, peak {:.2f} GiB\n'.format(
        torch.cuda.get_device_name(), seconds, peak)
    if os.environ.get('GPU_CHECK_OUT'):  # tools/gpu_check.sh keeps the figures
        with open(os.path.join(os.environ['GPU_CHECK_OUT'], 'figures.txt'), 'a') as f:
            f.write(figure)
    assert peak < 4, figure
