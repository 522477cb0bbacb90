"""The registered ``apinet`` engine and configs on a tiny generated synthreid dataset."""
import glob
import os
import re
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

import plugins
from plugins.training.launch import setup_config, start_run
from projects.apinet.engine import build_apinet_engine
from tests.helpers import amp_step

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
CONFIG_DIR = os.path.join(REPO, 'configs', 'apinet')
SYNTH_CONFIG = os.path.join(CONFIG_DIR, 'apinet_resnet50_synthreid.yaml')
TINY = ['synthreid.num_train_ids', '6', 'synthreid.num_test_ids', '5', 'synthreid.num_cams', '3',
        'synthreid.cams_per_id', '[2, 3]', 'synthreid.images_per_id_per_cam', '[2, 3]',
        'synthreid.num_distractors', '6', 'synthreid.num_junk', '3', 'synthreid.height', '32',
        'synthreid.width', '16', 'data.height', '32', 'data.width', '16', 'data.workers', '0',
        'train.batch_size', '8', 'test.batch_size', '16', 'train.print_freq', '1']
LOGGED = {'loss_pair_ce', 'loss_rank', 'loss_t', 'loss_x', 'acc', 'pairs_dropped'}


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp('apinet')
    cfg = setup_config(SYNTH_CONFIG, TINY + ['data.save_dir', str(root / 'log')],
                       root=str(root / 'data'))
    torch.manual_seed(0)
    return cfg, start_run(cfg, verbose=False), str(root / 'data')


def test_a_short_run_through_the_registered_engine_lowers_the_loss(run):
    cfg, engine, _ = run
    assert cfg.engine.name == 'apinet' and type(engine.model).__name__ == 'APINet'
    data = next(iter(engine.train_loader))
    assert len(set(data['pid'].tolist())) == 2  # a PK batch: 2 identities x 4 images
    engine.set_model_mode('train')
    logs = [engine.forward_backward(data) for _ in range(8)]
    assert LOGGED <= set(logs[0])
    total = [sum(v for k, v in log.items() if k.startswith('loss_')) for log in logs]
    pair_ce = [log['loss_pair_ce'] for log in logs]
    first, last = slice(0, 2), slice(-2, None)
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    assert mean(total[last]) < 0.8 * mean(total[first])
    assert mean(pair_ce[last]) < 0.8 * mean(pair_ce[first])
    assert all(log['pairs_dropped'] == 0 for log in logs)


def test_zero_weights_switch_terms_off(run):
    cfg, engine, _ = run
    cfg = cfg.clone()
    cfg.apinet.weight_rank = 0.0
    cfg.loss.triplet.weight_t = 0.0
    other = build_apinet_engine(cfg, engine.datamanager, engine.model, engine.optimizer, None)
    log = other.forward_backward(next(iter(engine.train_loader)))
    assert {'loss_pair_ce', 'loss_x'} <= set(log) and not {'loss_rank', 'loss_t'} & set(log)


def test_engine_needs_the_triplet_output_and_an_apinet_model(run):
    cfg, engine, _ = run
    softmax = cfg.clone()
    softmax.loss.name = 'softmax'
    with pytest.raises(ValueError, match="loss.name 'triplet'"):
        build_apinet_engine(softmax, engine.datamanager, engine.model, engine.optimizer, None)
    other = nn.Linear(2, 2)
    with pytest.raises(TypeError, match='API-Net model'):
        build_apinet_engine(cfg, engine.datamanager, other, torch.optim.SGD(other.parameters(), 0.1),
                            None)


def test_configs_load_with_their_bases():
    files = sorted(glob.glob(os.path.join(CONFIG_DIR, 'apinet_*.yaml')))
    assert len(files) == 5
    for path in files:
        cfg = setup_config(path)
        assert cfg.model.name == 'apinet_resnet50' and cfg.engine.name == 'apinet'
        assert cfg.loss.name == 'triplet' and cfg.sampler.train_sampler == 'PKSampler'
        assert cfg.train.batch_size % cfg.sampler.num_instances == 0
        assert cfg.apinet.rank_margin == 0.05 and cfg.train.lr_scheduler == 'cosine'
        if 'scratch' in path:  # the shared from-scratch recipe (configs/baselines)
            assert (cfg.model.pretrained, cfg.train.optim, cfg.train.warmup_epochs) == (False, 'adam', 5)
        elif 'synthreid' not in path:
            assert (cfg.data.height, cfg.data.width, cfg.train.optim) == (256, 128, 'sgd')
            assert cfg.data.sources[0] in os.path.basename(path)


def test_train_script_runs_the_project_end_to_end(run, tmp_path):
    _, _, data_root = run  # reuse the generated dataset
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, 'tools', 'train.py'), '--config-file', SYNTH_CONFIG,
         '--root', data_root, *TINY, 'train.max_epoch', '1', 'data.save_dir', str(tmp_path / 'log')],
        cwd=tmp_path, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "Plugin projects: ['apinet'" in out or "'apinet'" in out
    assert 'loss_pair_ce' in out and 'loss_rank' in out and 'pairs_dropped' in out
    rank1 = float(re.findall(r'Rank-1\s*:\s*([\d.]+)%', out)[-1])
    assert 0 <= rank1 <= 100
    assert os.path.isfile(tmp_path / 'log' / 'model' / 'model.pth.tar-1')


def test_pair_terms_train_under_bf16_autocast(run):
    cfg, engine, _ = run
    cfg = cfg.clone()
    cfg.train.amp = 'bf16'
    torch.manual_seed(0)
    model = plugins.build_model(cfg.model.name, engine.datamanager.num_train_pids, loss='triplet',
                                pretrained=False)
    other = build_apinet_engine(cfg, engine.datamanager, model,
                                torch.optim.SGD(model.parameters(), lr=0.01), None)
    log = amp_step(other, next(iter(engine.train_loader)))
    assert LOGGED <= set(log)
