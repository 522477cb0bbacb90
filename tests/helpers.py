"""Shared test helpers (``from tests.helpers import ...``): a tiny torchreid-contract network,
tiny synthreid options, a way to run the tools as a user does, and checks of device reads,
mixed-precision steps and torchrun ranks."""
import contextlib
import functools
import importlib.util
import os
import subprocess
import sys
import traceback

import pytest
import torch
import torch.nn as nn


class TinyReIDNet(nn.Module):
    """Follows torchreid's model contract: eval -> features; train -> logits or (logits, features).

    ``norm(channels)`` builds the normalisation layer (BatchNorm by default).
    """

    def __init__(self, num_classes=4, loss='softmax', feat_dim=8, norm=nn.BatchNorm2d, **kwargs):
        super().__init__()
        self.loss = loss
        self.backbone = nn.Sequential(nn.Conv2d(3, feat_dim, 3, padding=1), norm(feat_dim),
                                      nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(feat_dim, num_classes)

    def forward(self, x):
        v = self.backbone(x)
        if not self.training:
            return v
        y = self.classifier(v)
        return y if self.loss == 'softmax' else (y, v)


# Tensor methods that copy a device tensor's values to the host (a CUDA synchronisation)
HOST_READS = ('item', 'tolist', 'numpy', 'cpu', '__bool__', '__int__', '__float__', '__index__',
              'nonzero', 'unique', 'masked_select', 'repeat_interleave')


@contextlib.contextmanager
def count_host_reads():
    """Within the block, record every call that would wait for the device on a GPU: the
    ``HOST_READS`` methods, ``torch.nonzero``/``torch.tensor`` of Python data bound for a
    device, and indexing with a boolean mask (its size is read). Yields the list of
    ``'name at file:line'`` strings (the first caller outside torch)."""
    calls = []

    def where():
        for frame in traceback.extract_stack()[:-2][::-1]:
            if '/torch/' not in frame.filename and frame.filename != __file__:
                return '{}:{}'.format(os.path.relpath(frame.filename, REPO), frame.lineno)
        return '?'

    def counted(name, original, check=None):
        @functools.wraps(original)
        def wrapper(*args, **kwargs):
            if check is None or check(*args, **kwargs):
                calls.append('{} at {}'.format(name, where()))
            return original(*args, **kwargs)
        return wrapper

    def bool_mask(self, index, *rest):
        parts = index if isinstance(index, tuple) else (index,)
        return any(torch.is_tensor(i) and i.dtype == torch.bool for i in parts)

    patches = [(torch.Tensor, name, counted(name, getattr(torch.Tensor, name))) for name in HOST_READS]
    patches += [(torch.Tensor, '__getitem__', counted('boolean-mask index', torch.Tensor.__getitem__, bool_mask)),
                (torch.Tensor, '__setitem__', counted('boolean-mask assignment', torch.Tensor.__setitem__, bool_mask)),
                (torch, 'nonzero', counted('torch.nonzero', torch.nonzero)),
                (torch, 'tensor', counted('torch.tensor from host data', torch.tensor,
                                          lambda data, **kw: kw.get('device') is not None))]
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    try:
        for owner, name, wrapper in patches:
            setattr(owner, name, wrapper)
        yield calls
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before, module):
    """Names of the floating-point parameters/buffers of ``module`` that differ from ``before``."""
    after = module.state_dict()
    return {k for k, v in before.items() if v.is_floating_point() and not torch.equal(v, after[k])}


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# config overrides that make a synthreid dataset of a few dozen 32x16 images
TINY_SYNTHREID = ['synthreid.num_train_ids', '6', 'synthreid.num_test_ids', '5',
                  'synthreid.num_cams', '3', 'synthreid.cams_per_id', '[2, 3]',
                  'synthreid.images_per_id_per_cam', '[2, 3]', 'synthreid.num_distractors', '6',
                  'synthreid.num_junk', '3', 'synthreid.height', '32', 'synthreid.width', '16']


def tiny_synthreid_run(config, tmp_path, *opts):
    """The engine of ``config`` on a tiny generated synthreid at 32x16, batch 8, seeded."""
    from plugins.training.launch import setup_config, start_run
    cfg = setup_config(config, [*TINY_SYNTHREID, 'data.height', '32', 'data.width', '16',
                                'data.workers', '0', 'train.batch_size', '8',
                                'data.save_dir', str(tmp_path / 'log'), *opts],
                       root=str(tmp_path / 'data'))
    torch.manual_seed(0)
    return start_run(cfg, verbose=False)


def run_tool(name, *args, cwd, timeout=600):
    """Run ``tools/<name>.py`` in a subprocess; returns (exit code, stdout + stderr)."""
    proc = subprocess.run([sys.executable, os.path.join(REPO, 'tools', name + '.py'), *args],
                          cwd=cwd, capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr


def load_tool(name):
    """Import ``tools/<name>.py`` as a module, to call its ``main`` in-process."""
    spec = importlib.util.spec_from_file_location('tool_' + name,
                                                  os.path.join(REPO, 'tools', name + '.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_benchmark_section(name, out_dir, *extra):
    """``tools/benchmark.py --sections NAME --quick [extra]``: returns (the section's JSON result,
    the Markdown)."""
    import json
    load_tool('benchmark').main(['--sections', name, '--quick', '--out-dir', str(out_dir), *extra])
    report = json.loads((out_dir / 'benchmark.json').read_text())
    return report['sections'][name], (out_dir / 'benchmark.md').read_text()


def amp_step(engine, batch, dtype=torch.bfloat16, steps=1, trained=True):
    """Training steps of ``engine`` (built with ``train.amp``) until most trained parameters
    moved, at most ``steps`` (fp16 needs several: its scaler skips steps while it backs off
    from overflow, 2**16 at the start). The forward ran in ``dtype``, and the step that moved
    the weights logged finite values. With ``trained`` False, one step and only the forward's
    dtype is checked. Returns the last log."""
    seen = []
    first_conv = next(m for m in engine.model.modules() if isinstance(m, nn.Conv2d))
    handle = first_conv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    params = {n: p.detach().clone() for n, p in engine.model.named_parameters() if p.requires_grad}

    def moved():
        return [n for n, p in engine.model.named_parameters()
                if n in params and not torch.equal(p, params[n])]
    engine.set_model_mode('train')
    # On CPU, oneDNN's bf16 convolution reads uninitialised memory: with glibc handing back
    # freed buffers (MALLOC_PERTURB_=128 makes it certain) ResNet's layer4 returned NaN from
    # finite inputs. torch's own kernels do not; the step runs on them.
    onednn = not (engine.device.type == 'cpu' and dtype == torch.bfloat16)
    try:
        with torch.backends.mkldnn.flags(enabled=onednn):
            for _ in range(steps if trained else 1):
                log = engine.forward_backward(batch)
                if trained and len(moved()) > len(params) // 2:
                    break
    finally:
        handle.remove()
    assert seen and seen[0] == dtype
    if not trained:
        return log
    assert len(moved()) > len(params) // 2, sorted(set(params) - set(moved()))
    assert all(torch.isfinite(torch.as_tensor(v)).all() for v in log.values()), log
    return log


MARKET_SUBSET_IDS = 40  # train and test identities of the real-data subset


def ddp_rank_checksums(configs, tmp_path, *opts):
    """``{(config file name, network): [checksum of rank 0, of rank 1]}`` after two steps of
    each of ``configs`` (a path or a list) under torchrun with 2 gloo processes on CPU (see
    ``tests/plugins/ddp_rank_sync.py``), all in one launch."""
    configs = [configs] if isinstance(configs, str) else list(configs)
    proc = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
         os.path.join(REPO, 'tests', 'plugins', 'ddp_rank_sync.py'), ','.join(configs),
         str(tmp_path / 'data'), str(tmp_path / 'log'), *opts],
        cwd=tmp_path, capture_output=True, text=True, timeout=1800,
        env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    return {tuple(line.split()[1:3]): [float(v) for v in line.split()[3:]]
            for line in proc.stdout.splitlines() if line.startswith('CHECKSUM ')}


# a device parameter for tests that run on the CPU and, where there is one, on a GPU
# (collected by ``pytest -m cuda``, as tools/gpu_check.sh does)
CUDA = pytest.param('cuda', marks=[pytest.mark.cuda, pytest.mark.skipif(
    not torch.cuda.is_available(), reason='needs a CUDA GPU')])
