import subprocess
import sys

import numpy as np
import pytest
import torchreid
from torchreid.reid.data import ImageDataManager

import plugins
from plugins.host.fixes import install_host_fixes
from tests.helpers import REPO


def test_missing_dataset_folder_is_named_and_nothing_is_downloaded(tmp_path, monkeypatch):
    import torchreid.reid.data.datasets.dataset as dataset_module

    def no_network(*args, **kwargs):
        raise AssertionError('tried to download')

    monkeypatch.setattr(dataset_module, 'download_url', no_network)
    with pytest.raises(FileNotFoundError) as err:
        ImageDataManager(root=str(tmp_path), sources='market1501', use_gpu=False, workers=0)
    assert str(tmp_path / 'market1501') in str(err.value) and 'bounding_box_train' in str(err.value)
    assert not (tmp_path / 'market1501').exists()


def test_engine_evaluation_uses_the_fast_metric_and_fixes_are_idempotent():
    install_host_fixes()
    install_host_fixes()
    assert torchreid.reid.metrics.evaluate_rank is plugins.evaluate_rank
    rng = np.random.default_rng(0)
    distmat = rng.random((6, 20))
    q_pids, g_pids = np.arange(6) % 3, np.arange(20) % 4
    q_cams, g_cams = np.zeros(6, int), np.ones(20, int)
    cmc, mAP = torchreid.reid.metrics.evaluate_rank(distmat, q_pids, g_pids, q_cams, g_cams,
                                                    use_metric_cuhk03=True)
    assert cmc[-1] == 1.0 and 0 < mAP <= 1  # every query's id is in the gallery


def test_importing_plugins_silences_only_the_hosts_false_cython_warning():
    """torchreid warns at import that its Cython evaluation is missing; ours replaces it."""
    code = ('import warnings, plugins; '
            'warnings.warn("another warning")')
    proc = subprocess.run([sys.executable, '-W', 'default', '-c', code], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert 'Cython evaluation' not in proc.stderr and 'another warning' in proc.stderr
