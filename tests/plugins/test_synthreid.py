"""Tests of the embedded SynthReID dataset (tiny specs, generated into tmp_path)."""
import glob
import hashlib
import json
import os
import os.path as osp
import re
from itertools import combinations

import cv2
import numpy as np
import pytest

from plugins.data.datasets import synthreid

TINY = dict(seed=3, num_train_ids=8, num_test_ids=6, num_cams=3, cams_per_id=[2, 3],
            images_per_id_per_cam=[1, 3], query_per_id=2, num_distractors=10, num_junk=5, height=64, width=32)
NAME_RE = re.compile(r'^(-1|\d{4})_c(\d+)s\d+_\d{6}_\d{2}\.jpg$')
FOLDERS = ('bounding_box_train', 'bounding_box_test', 'query')


def _generate(root, **overrides):
    dataset_dir = osp.join(str(root), 'synthreid')
    synthreid.generate(dataset_dir, {**synthreid.DEFAULT_SPEC, **TINY, **overrides})
    return dataset_dir


def _hashes(dataset_dir):
    return {osp.relpath(path, dataset_dir): hashlib.sha1(open(path, 'rb').read()).hexdigest()
            for path in glob.glob(osp.join(dataset_dir, '*', '*.jpg'))}


def _pids(dataset_dir, folder):
    return {int(name.split('_')[0]) for name in os.listdir(osp.join(dataset_dir, folder))}


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    return _generate(tmp_path_factory.mktemp('tiny'))


def test_same_seed_is_byte_identical_and_other_seed_differs(tiny, tmp_path):
    again = _generate(tmp_path / 'again')
    assert _hashes(again) == _hashes(tiny)
    for name in sorted(os.listdir(osp.join(tiny, 'query')))[:3]:
        a, b = (cv2.imread(osp.join(d, 'query', name)) for d in (tiny, again))
        assert np.array_equal(a, b)
    other = _hashes(_generate(tmp_path / 'other', seed=4))
    assert set(other.values()).isdisjoint(_hashes(tiny).values())


def test_layout_and_naming(tiny):
    for folder in FOLDERS:
        names = os.listdir(osp.join(tiny, folder))
        assert names
        for name in names:
            match = NAME_RE.match(name)
            assert match, name
            assert 1 <= int(match.group(2)) <= TINY['num_cams']
    img = cv2.imread(glob.glob(osp.join(tiny, 'query', '*.jpg'))[0])
    assert img.shape == (TINY['height'], TINY['width'], 3)
    stored = json.load(open(osp.join(tiny, 'spec.json')))
    assert stored['spec'] == synthreid.validate_spec({**synthreid.DEFAULT_SPEC, **TINY})


def test_identity_splits(tiny):
    train = _pids(tiny, 'bounding_box_train')
    gallery = _pids(tiny, 'bounding_box_test')
    query = _pids(tiny, 'query')
    assert len(train) == TINY['num_train_ids'] and not train & {0, -1}
    assert train.isdisjoint(gallery | query)
    assert query <= gallery
    assert len(query) == TINY['num_test_ids']
    assert {0, -1} <= gallery
    gallery_names = os.listdir(osp.join(tiny, 'bounding_box_test'))
    assert sum(n.startswith('0000_') for n in gallery_names) == TINY['num_distractors']
    assert sum(n.startswith('-1_') for n in gallery_names) == TINY['num_junk']


def test_every_query_has_a_cross_camera_match(tiny):
    gallery = {(n.split('_')[0], n.split('_')[1][:2]) for n in os.listdir(osp.join(tiny, 'bounding_box_test'))}
    for name in os.listdir(osp.join(tiny, 'query')):
        pid, cam = name.split('_')[0], name.split('_')[1][:2]
        assert any(p == pid and c != cam for p, c in gallery), name


def test_loader_through_datamanager(tmp_path):
    from torchreid.reid.data import ImageDataManager
    synthreid.register()
    synthreid.register()  # idempotent
    synthreid.prepare(str(tmp_path), **TINY)  # the host builds it without a spec: it reads the disk
    dm = ImageDataManager(root=str(tmp_path), sources='synthreid', height=64, width=32, batch_size_train=8,
                          workers=0, transforms=['random_flip'], use_gpu=False)
    assert dm.num_train_pids == TINY['num_train_ids']
    batch = next(iter(dm.train_loader))
    assert tuple(batch['img'].shape) == (8, 3, 64, 32)
    assert int(batch['pid'].max()) < TINY['num_train_ids']
    gallery = dm.test_loader['synthreid']['gallery'].dataset.gallery
    assert -1 not in {pid for _, pid, _, _ in gallery}
    assert 0 in {pid for _, pid, _, _ in gallery}
    on_disk = os.listdir(osp.join(str(tmp_path), 'synthreid', 'bounding_box_test'))
    assert len(gallery) == len(on_disk) - TINY['num_junk']


def test_regenerates_only_when_spec_changes(tmp_path, capsys):
    spec_file = osp.join(str(tmp_path), 'synthreid', 'spec.json')
    synthreid.SynthReID(root=str(tmp_path), spec=TINY, verbose=False)
    assert 'generated' in capsys.readouterr().out
    stamp = os.stat(spec_file).st_mtime_ns
    synthreid.SynthReID(root=str(tmp_path), spec=TINY, verbose=False)
    assert 'generated' not in capsys.readouterr().out
    assert os.stat(spec_file).st_mtime_ns == stamp
    data = synthreid.SynthReID(root=str(tmp_path), spec={**TINY, 'num_train_ids': 5}, verbose=False)
    assert 'generated' in capsys.readouterr().out
    assert data.num_train_pids == 5
    assert len(_pids(osp.dirname(spec_file), 'bounding_box_train')) == 5
    assert not [n for n in os.listdir(str(tmp_path)) if n != 'synthreid']  # no temporary folders left


def test_interrupted_generation_leaves_no_dataset(tmp_path, monkeypatch):
    def fail(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(synthreid, 'render_shot', fail)
    with pytest.raises(KeyboardInterrupt):
        _generate(tmp_path)
    assert os.listdir(str(tmp_path)) == []


def test_spec_validation():
    full = synthreid.validate_spec({**synthreid.DEFAULT_SPEC, 'num_cams': 4, 'cams_per_id': 3})
    assert full['cams_per_id'] == [3, 3]
    for bad, error in (({'num_ids': 3}, TypeError), ({'num_cams': 7}, ValueError),
                       ({'num_cams': 3, 'cams_per_id': [2, 4]}, ValueError)):
        with pytest.raises(error):
            synthreid.prepare('/nonexistent-never-written', **bad)


def test_without_a_spec_the_dataset_on_disk_is_read(tmp_path, capsys):
    synthreid.prepare(str(tmp_path), **TINY)
    assert 'generated' in capsys.readouterr().out
    data = synthreid.SynthReID(root=str(tmp_path), verbose=False)  # as the host builds it
    assert 'generated' not in capsys.readouterr().out
    assert data.num_train_pids == TINY['num_train_ids'] and data.spec['seed'] == TINY['seed']


def _histogram(path):
    """Colour histogram of the torso region (mostly the upper garment)."""
    img = cv2.imread(path)
    h, w = img.shape[:2]
    torso = img[h // 4:h // 2, w // 3:w - w // 3]
    hist = cv2.calcHist([torso], [0, 1, 2], None, [4, 4, 4], [0, 256] * 3).ravel()
    return hist / hist.sum()


def test_same_identity_across_cameras_is_closer_than_other_identities(tmp_path):
    dataset_dir = _generate(tmp_path, num_train_ids=30, num_test_ids=2, num_distractors=0, num_junk=0)
    train_dir = osp.join(dataset_dir, 'bounding_box_train')
    shots = [(int(n.split('_')[0]), n.split('_')[1][:2], _histogram(osp.join(train_dir, n)))
             for n in sorted(os.listdir(train_dir))]
    same, other = [], []
    for (pa, ca, ha), (pb, cb, hb) in combinations(shots, 2):
        if ca != cb:
            (same if pa == pb else other).append(np.abs(ha - hb).sum())
    assert min(same) > 0  # never identical
    assert np.mean(same) < 0.9 * np.mean(other)
