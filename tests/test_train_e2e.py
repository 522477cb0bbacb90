"""tools/train.py as a user runs it, on a tiny generated synthreid dataset."""
import os
import re

from tests.helpers import REPO, TINY_SYNTHREID, run_tool

FAST = ['data.height', '32', 'data.width', '16', 'data.workers', '0', 'train.batch_size', '8',
        'test.batch_size', '16', 'train.print_freq', '1']


def train(*args, cwd):
    return run_tool('train', *args, cwd=cwd)


def metrics(output):
    rank1 = float(re.findall(r'Rank-1\s*:\s*([\d.]+)%', output)[-1])
    mAP = float(re.findall(r'mAP:\s*([\d.]+)%', output)[-1])
    return rank1, mAP


def test_train_evaluate_resume_and_test_only(tmp_path):
    root, save = str(tmp_path / 'data'), str(tmp_path / 'log')
    common = ['--root', root, *TINY_SYNTHREID, *FAST, 'data.save_dir', save,
              'data.sources', 'synthreid', 'data.targets', 'synthreid']
    code, out = train('--config-file', os.path.join(REPO, 'configs/baselines/resnet50_synthreid.yaml'),
                      *common, 'model.name', 'resnet18', 'train.max_epoch', '2', cwd=tmp_path)
    assert code == 0, out
    rank1, mAP = metrics(out)
    assert 0 <= rank1 <= 100 and 0 < mAP <= 100
    assert 'Model complexity: params=' in out and '** System info **' in out
    assert any(f.startswith('train.log-') for f in os.listdir(save))
    ckpt = os.path.join(save, 'model', 'model.pth.tar-2')
    assert os.path.isfile(ckpt)

    code, out = train('--config-file', os.path.join(REPO, 'configs/baselines/resnet50_synthreid.yaml'),
                      *common, 'model.name', 'resnet18', 'train.max_epoch', '3',
                      'model.resume', ckpt, cwd=tmp_path)
    assert code == 0, out
    assert "Resumed 'model'" in out and 'epoch: [3/3]' in out and 'epoch: [1/3]' not in out
    assert os.path.isfile(os.path.join(save, 'model', 'model.pth.tar-3'))

    code, out = train('--config-file', os.path.join(REPO, 'configs/baselines/resnet50_synthreid.yaml'),
                      *common, 'model.name', 'resnet18', 'test.evaluate', 'True',
                      'model.load_weights', ckpt, cwd=tmp_path)
    assert code == 0, out
    assert metrics(out) == (rank1, mAP)  # same weights, same evaluation
    assert 'epoch: [' not in out


UPSTREAM_R50 = os.path.join(REPO, 'tests', 'data', 'im_r50_softmax_256x128_amsgrad.yaml')


def test_upstream_config_runs_unchanged_with_only_the_dataset_overridden(tmp_path, monkeypatch):
    """Upstream's im_r50_softmax_256x128_amsgrad.yaml, verbatim; pretrained weights are missing offline."""
    config = UPSTREAM_R50
    env_home = str(tmp_path / 'torch_home')
    monkeypatch.setenv('TORCH_HOME', env_home)
    code, out = train('--config-file', str(config), '-s', 'synthreid', '-t', 'synthreid',
                      '--root', str(tmp_path / 'data'), *TINY_SYNTHREID, 'data.workers', '0', cwd=tmp_path)
    assert code != 0
    assert 'resnet50-19c8e357.pth' in out and env_home in out and 'model.pretrained False' in out
    assert 'Traceback' not in out  # a user error, not a crash

    code, out = train('--config-file', str(config), '-s', 'synthreid', '-t', 'synthreid',
                      '--root', str(tmp_path / 'data'), *TINY_SYNTHREID, *FAST, 'model.pretrained', 'False',
                      'train.max_epoch', '1', 'train.fixbase_epoch', '0', cwd=tmp_path)
    assert code == 0, out
    assert 0 <= metrics(out)[0] <= 100


def test_bad_config_key_is_reported_with_its_file(tmp_path):
    config = tmp_path / 'typo.yaml'
    config.write_text('train:\n  max_epochs: 3\n')
    code, out = train('--config-file', str(config), cwd=tmp_path)
    assert code != 0 and "Unknown config key 'train.max_epochs'" in out and 'typo.yaml' in out
    assert 'Traceback' not in out
