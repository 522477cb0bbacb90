"""Every shipped config, with only its dataset and input size replaced by a tiny synthreid.

Each keeps its own model, engine, sampler, loss weights (ablations included) and
``train.fixbase_epoch``. Configs that then differ only in what two steps cannot
see (the dataset, epochs, LR steps, evaluation) are run once. Every such run:

* trains two steps under torchrun with 2 gloo processes, and every network stays
  equal on both ranks (one launch for all configs);
* takes a bf16 and an fp16 step (every registered model with its engine);
* reads nothing from the device within a step (what would be a CUDA
  synchronisation on a GPU: ``item``, ``tolist``, ``nonzero``, boolean masks, ...).
"""
import glob
import os

import pytest
import torch

import plugins
from plugins.training.checkpoint import save_checkpoint
from plugins.training.launch import setup_config
from plugins.training.precision import Precision
from tests.helpers import (REPO, TINY_SYNTHREID, amp_step, count_host_reads, ddp_rank_checksums,
                            tiny_synthreid_run)

NUM_IDS = 6  # TINY_SYNTHREID's training identities
SIZE = ['data.height', '80', 'data.width', '40']  # DG-Net's E_s needs at least 37 pixels a side
TINY = [*TINY_SYNTHREID, 'data.sources', "['synthreid']", 'data.targets', "['synthreid']", *SIZE,
        'train.batch_size', '16', 'model.pretrained', 'False']  # no ImageNet weights here
# keys whose values two steps here cannot tell apart: datasets, schedules, evaluation,
# logging, augmentation and the values (not the presence) of rates and decays
UNSEEN = ('data.sources', 'data.targets', 'data.save_dir', 'data.root', 'data.workers',
          'data.transforms', 'cuhk03.', 'train.max_epoch', 'train.stepsize', 'train.start_epoch',
          'train.lr', 'train.gamma', 'train.warmup_', 'train.weight_decay', 'train.print_freq',
          'test.', 'model.pretrained', 'teacher.weights', 'loss.softmax.label_smooth',
          'dgnet.lr_')


def shipped_configs():
    return sorted(p for p in glob.glob(os.path.join(REPO, 'configs', '*', '*.yaml'))
                  if not os.path.basename(p).startswith('_'))


def _flatten(node, prefix=''):
    for key, value in sorted(node.items()):
        if isinstance(value, dict):
            yield from _flatten(value, prefix + key + '.')
        else:
            yield prefix + key, repr(value)


def distinct_configs():
    """One config per group of shipped configs that train identically for two steps here."""
    seen = {}
    for path in shipped_configs():
        cfg = setup_config(path, TINY)
        key = tuple(item for item in _flatten(cfg) if not item[0].startswith(UNSEEN))
        seen.setdefault(key, path)
    return sorted(seen.values())


DISTINCT = distinct_configs()
MODEL_ENGINES = {}  # one config per (model, engine) pair: the amp and host-read checks
for _path in DISTINCT:
    _cfg = setup_config(_path, TINY)
    MODEL_ENGINES.setdefault((_cfg.model.name, _cfg.engine.name or _cfg.loss.name), _path)


def _teacher_opts(path, folder):
    """A local teacher checkpoint for configs whose engine needs one (DG-Net)."""
    cfg = setup_config(path, TINY)
    if cfg.engine.name != 'dgnet':
        return []
    weights = os.path.join(str(folder), cfg.teacher.model, 'model.pth.tar-1')
    if not os.path.isfile(weights):
        teacher = plugins.build_model(cfg.teacher.model, NUM_IDS, loss='softmax', pretrained=False)
        save_checkpoint({'state_dict': teacher.state_dict()}, os.path.dirname(weights),
                        name='model.pth.tar-1')
    return ['teacher.weights', weights]


def test_the_distinct_configs_cover_every_model_and_engine():
    names = {setup_config(p, TINY).model.name for p in shipped_configs()}
    assert names == {setup_config(p, TINY).model.name for p in DISTINCT}
    assert len(DISTINCT) < len(shipped_configs())  # the per-dataset copies collapse


def test_every_shipped_config_trains_under_torchrun_with_equal_ranks(tmp_path):
    teacher = [opt for path in DISTINCT for opt in _teacher_opts(path, tmp_path)][:2]
    sums = ddp_rank_checksums(DISTINCT, tmp_path, *TINY, *teacher)
    assert {config for config, _ in sums} == {os.path.basename(p) for p in DISTINCT}
    for (config, net), (rank0, rank1) in sums.items():
        assert rank0 == pytest.approx(rank1, rel=1e-9, abs=1e-6), (config, net)


@pytest.fixture(scope='module', params=sorted(MODEL_ENGINES), ids=lambda p: '{}-{}'.format(*p))
def model_engine(request, tmp_path_factory):
    """The engine of a (model, engine) pair, at batch 8 and the smallest size it takes."""
    path = MODEL_ENGINES[request.param]
    folder = tmp_path_factory.mktemp('run')
    torch.set_num_threads(2)
    size = SIZE if request.param[1] == 'dgnet' else ['data.height', '64', 'data.width', '32']
    engine = tiny_synthreid_run(path, folder, *TINY, *size, 'train.batch_size', '8',
                                *_teacher_opts(path, folder))
    return engine, next(iter(engine.train_loader))


def test_a_training_step_reads_nothing_from_the_device(model_engine):
    engine, batch = model_engine
    engine.precision = Precision('', engine.device)
    engine.set_model_mode('train')
    engine.forward_backward(batch)  # first step: caches fill (gradient patterns, fused checks)
    with count_host_reads() as reads:
        engine.forward_backward(batch)
    assert reads == []


def test_every_model_and_engine_takes_a_bf16_step(model_engine):
    """Finite losses and most parameters moved."""
    engine, batch = model_engine
    engine.precision = Precision('bf16', engine.device)
    amp_step(engine, batch, dtype=torch.bfloat16)


def test_every_model_and_engine_takes_an_fp16_step(model_engine):
    """One step in fp16 with its gradient scaler: CPUs have no fp16 kernels (seconds per step),
    so that the scaler backs off to a useful scale and the weights move is the GPU check's
    to show (``tests/test_cuda.py``)."""
    engine, batch = model_engine
    engine.precision = Precision('fp16', engine.device)
    amp_step(engine, batch, dtype=torch.float16, trained=False)
    assert 0 < engine.precision.scaler('model').get_scale() < float('inf')
