"""SynthReID: a person re-identification dataset that is drawn, not downloaded.

On first use the dataset is generated into ``<root>/synthreid/`` in Market-1501's
layout (``bounding_box_train/``, ``bounding_box_test/``, ``query/``; files named
``PPPP_cCsS_FFFFFF_BB.jpg``), deterministically from a seed, and then parsed
exactly like Market-1501, so every config can run offline.

Identity lives in a combination of attributes, each shared by many people:
clothing colours (from a palette with look-alike colours), garment pattern,
sleeve and lower-garment type, hair, skin, body proportions and accessories.
A third of the identities are near copies of another one with one or two
attributes changed. Every camera has its own scene, colour cast, brightness,
sharpness, noise, typical viewpoint (front, back or side, which hides or shows
backpacks, logos and faces) and person scale; every shot adds pose, box
jitter, clutter and occlusion.

Usage::

    from plugins.data.datasets import synthreid
    synthreid.register()                            # once: 'synthreid' is a torchreid source
    synthreid.prepare('reid-data', num_train_ids=50)  # optional: another spec than the default
    ImageDataManager(root='reid-data', sources='synthreid', ...)

The host builds datasets without a spec, so the dataset is what is on disk: the launcher
generates the config's spec (``synthreid.*`` keys) with :func:`prepare` before it builds
the data manager.
"""
import copy
import json
import os
import os.path as osp
import shutil
import tempfile
import time

import cv2
import numpy as np

from torchreid.reid.data import datasets as torchreid_datasets
from torchreid.reid.data import register_image_dataset
from torchreid.reid.data.datasets.dataset import ImageDataset
from torchreid.reid.data.datasets.image.market1501 import Market1501

from plugins import distributed
from plugins.data.datasets.synthreid_render import plan, render_shot

NAME = 'synthreid'

# Bump whenever a change to the generator changes its output: stored datasets
# made by another version are then regenerated.
GENERATOR_VERSION = 1

DEFAULT_SPEC = {
    'seed': 0,
    'num_train_ids': 150,
    'num_test_ids': 100,
    'num_cams': 6,
    'cams_per_id': [3, 6],  # each identity is seen by this many cameras (inclusive range)
    'images_per_id_per_cam': [2, 5],  # images of one identity in one camera (inclusive range)
    'query_per_id': 3,  # one query per camera of a test identity, in at most this many cameras
    'num_distractors': 400,  # pid 0 gallery images: other people and false detections
    'num_junk': 150,  # pid -1 gallery images: fragments, ignored by the loader
    'height': 128,  # stored image size
    'width': 64,
}

_RANGE_KEYS = ('cams_per_id', 'images_per_id_per_cam')
JPEG_QUALITY = 90
SUBSET_DIRS = {'train': 'bounding_box_train', 'query': 'query', 'gallery': 'bounding_box_test'}


# ----------------------------------------------------------------------------
# Spec handling
# ----------------------------------------------------------------------------

def validate_spec(spec):
    """Return a normalised copy of a full ``spec`` (ranges as [lo, hi] lists); raise on bad values."""
    unknown = set(spec) - set(DEFAULT_SPEC)
    missing = set(DEFAULT_SPEC) - set(spec)
    if unknown or missing:
        raise TypeError('synthreid spec: unknown keys {}, missing keys {}'.format(
            sorted(unknown), sorted(missing)))

    def check(ok, message):
        if not ok:
            raise ValueError('synthreid spec: ' + message)

    spec = copy.deepcopy(spec)
    for key in DEFAULT_SPEC:
        if key in _RANGE_KEYS:
            lo, hi = (spec[key], spec[key]) if np.isscalar(spec[key]) else spec[key]
            spec[key] = [int(lo), int(hi)]
            check(1 <= lo <= hi, '{} must be a count or an inclusive range [lo, hi], 1 <= lo <= hi'.format(key))
        else:
            spec[key] = int(spec[key])
    # Market1501.process_dir, which parses the folders, accepts cameras 1-6 and pids up to 1501.
    check(2 <= spec['num_cams'] <= 6, 'num_cams must be in 2..6')
    check(spec['num_train_ids'] >= 1 and spec['num_test_ids'] >= 1, 'need at least one train and one test id')
    check(spec['num_train_ids'] + spec['num_test_ids'] <= 1501, 'at most 1501 identities in total')
    check(spec['images_per_id_per_cam'][1] <= 1000, 'at most 1000 images per identity and camera')
    check(2 <= spec['cams_per_id'][0] and spec['cams_per_id'][1] <= spec['num_cams'],
          'cams_per_id must lie in 2..num_cams (queries need another camera to match)')
    check(spec['query_per_id'] >= 1, 'query_per_id must be >= 1')
    check(0 <= spec['num_distractors'] < 100000 and 0 <= spec['num_junk'] < 100000,
          'num_distractors and num_junk must be in 0..99999')
    check(spec['height'] >= 16 and spec['width'] >= 8, 'images must be at least 16x8 (height x width)')
    return spec


def prepare(root, **spec):
    """Generate ``<root>/synthreid`` from DEFAULT_SPEC updated with ``spec``, unless it holds
    that dataset already; return the full spec."""
    full = validate_spec({**DEFAULT_SPEC, **spec})
    ensure_generated(dataset_folder(root), full)
    return full


def dataset_folder(root):
    return osp.join(osp.abspath(osp.expanduser(root)), NAME)


# ----------------------------------------------------------------------------
# Generation on disk
# ----------------------------------------------------------------------------

def _spec_record(spec):
    return {'generator_version': GENERATOR_VERSION, 'spec': spec}


def stored_spec(dataset_dir):
    """The spec of the complete dataset in ``dataset_dir`` made by this generator version, or None."""
    try:
        with open(osp.join(dataset_dir, 'spec.json')) as f:
            stored = json.load(f)
    except (OSError, ValueError):
        return None
    return stored.get('spec') if stored.get('generator_version') == GENERATOR_VERSION else None


def is_generated(dataset_dir, spec):
    """Whether ``dataset_dir`` holds a complete dataset generated from ``spec``."""
    return stored_spec(dataset_dir) == _spec_record(spec)['spec']


def _stats(shots):
    """Image and identity counts per folder, distractors and junk counted apart."""
    stats = {}
    for subset in SUBSET_DIRS:
        mine = [s for s in shots if s.subset == subset]
        pids = {int(s.filename.split('_')[0]) for s in mine}
        stats[subset] = {'images': len(mine), 'ids': len(pids - {0, -1})}
    stats['distractors'] = sum(s.filename.startswith('0000_') for s in shots)
    stats['junk'] = sum(s.filename.startswith('-1_') for s in shots)
    return stats


def generate(dataset_dir, spec):
    """(Re)generate the dataset ``spec`` into ``dataset_dir``, atomically; return its statistics.

    Images go to a temporary sibling folder that replaces ``dataset_dir`` only once it is
    complete (``spec.json`` written last), so an interrupted run never leaves a dataset
    that looks complete.
    """
    spec = validate_spec(spec)
    start = time.time()
    parent = osp.dirname(osp.abspath(dataset_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix='.{}-tmp-'.format(osp.basename(dataset_dir)), dir=parent)
    try:
        cameras, shots = plan(spec)
        for folder in SUBSET_DIRS.values():
            os.makedirs(osp.join(tmp, folder))
        for shot in shots:
            img = render_shot(shot, cameras[shot.camera], spec['height'], spec['width'])
            path = osp.join(tmp, SUBSET_DIRS[shot.subset], shot.filename)
            if not cv2.imwrite(path, img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
                raise OSError('could not write ' + path)
        stats = _stats(shots)
        with open(osp.join(tmp, 'spec.json'), 'w') as f:
            json.dump({**_spec_record(spec), 'stats': stats}, f, indent=2)
        if osp.exists(dataset_dir):
            old = tempfile.mkdtemp(prefix='.{}-old-'.format(osp.basename(dataset_dir)), dir=parent)
            os.rename(dataset_dir, osp.join(old, 'data'))
            os.rename(tmp, dataset_dir)
            shutil.rmtree(old)
        else:
            os.rename(tmp, dataset_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print('=> SynthReID: generated {} images (train {}, query {}, gallery {} incl. {} distractors and {} junk) '
          'in "{}" in {:.1f}s'.format(len(shots), stats['train']['images'], stats['query']['images'],
                                      stats['gallery']['images'], stats['distractors'], stats['junk'],
                                      dataset_dir, time.time() - start))
    return stats


def ensure_generated(dataset_dir, spec):
    """Generate ``dataset_dir`` unless it already holds ``spec``; return whether it generated.

    Under torchrun one process writes while the others wait: global rank 0 first,
    then local rank 0 of any node that still lacks it (no shared filesystem).
    """
    generated = False
    for writer in (distributed.is_main(), distributed.get_local_rank() == 0):
        if writer and not is_generated(dataset_dir, spec):
            generate(dataset_dir, spec)
            generated = True
        distributed.barrier()
    return generated


# ----------------------------------------------------------------------------
# torchreid dataset
# ----------------------------------------------------------------------------

class SynthReID(ImageDataset):
    """Procedurally generated person re-id dataset in Market-1501's layout.

    With ``spec`` (DEFAULT_SPEC updated with it) that dataset is generated unless on disk;
    without (as the host builds it), the dataset on disk is read (see :func:`prepare`), and
    DEFAULT_SPEC generated where there is none. ``stats`` holds image and identity counts
    per folder, including the pid 0 distractors and pid -1 junk in the gallery folder.
    """
    _junk_pids = [0, -1]
    dataset_dir = NAME

    def __init__(self, root='', spec=None, **kwargs):
        self.root = osp.abspath(osp.expanduser(root))
        self.dataset_dir = osp.join(self.root, self.dataset_dir)
        if spec is None:
            spec = stored_spec(self.dataset_dir) or DEFAULT_SPEC
        self.spec = validate_spec({**DEFAULT_SPEC, **spec})
        ensure_generated(self.dataset_dir, self.spec)
        with open(osp.join(self.dataset_dir, 'spec.json')) as f:
            self.stats = json.load(f)['stats']

        self.train_dir = osp.join(self.dataset_dir, SUBSET_DIRS['train'])
        self.query_dir = osp.join(self.dataset_dir, SUBSET_DIRS['query'])
        self.gallery_dir = osp.join(self.dataset_dir, SUBSET_DIRS['gallery'])
        self.check_before_run([self.dataset_dir, self.train_dir, self.query_dir, self.gallery_dir])

        train = self.process_dir(self.train_dir, relabel=True)
        query = self.process_dir(self.query_dir, relabel=False)
        gallery = self.process_dir(self.gallery_dir, relabel=False)
        super().__init__(train, query, gallery, **kwargs)

    def process_dir(self, dir_path, relabel=False):
        """Market1501's parser (junk dropped, distractors kept), in a stable order and relabelling."""
        data = sorted(Market1501.process_dir(self, dir_path, relabel=False))
        if relabel:
            pid2label = {pid: label for label, pid in enumerate(sorted({pid for _, pid, _ in data}))}
            data = [(path, pid2label[pid], camid) for path, pid, camid in data]
        return data

    def show_summary(self):
        super().show_summary()
        print('  gallery includes {} distractors (pid 0); {} junk images (pid -1) ignored'.format(
            self.stats['distractors'], self.stats['junk']))


def register():
    """Register :class:`SynthReID` with torchreid as ``'synthreid'``; calling it again is a no-op."""
    # torchreid has no lookup API and raises on duplicate names, so look at its table.
    if vars(torchreid_datasets)['__image_datasets'].get(NAME) is not SynthReID:
        register_image_dataset(NAME, SynthReID)
