"""Narrow runtime fixes for gaps of the PyPI ``torchreid==0.2.5`` package.

Each fix replaces one host name with ours and has a test in ``tests/plugins``:

* checkpoints: ``weights_only`` loading with a numpy-scalar allow-list, plain
  numbers and atomic writes when saving (:mod:`plugins.training.checkpoint`);
* evaluation: the engine's ``metrics.evaluate_rank`` becomes our vectorised
  one (same results; the wheel has no compiled evaluation), its distance
  matrix is computed on the GPU when there is one, and the CUHK03
  metric stops using ``np.bool`` (missing in numpy 1.24-1.26, an alias again
  since numpy 2) (:mod:`plugins.evaluation.protocol`);
* samplers: ``build_train_sampler`` also builds registered samplers
  (:mod:`plugins.data.samplers`);
* datasets: ``synthreid`` is registered (:mod:`plugins.data.datasets`), and a
  missing dataset folder is an error naming it instead of a download attempt
  (:func:`offline_dataset_check`);
* images: an unreadable image is an error naming the file instead of an
  endless retry, or is skipped with ``data.skip_bad_images`` (:mod:`plugins.data.images`).
"""
import os.path as osp

from torchreid.reid import metrics
from torchreid.reid.data.datasets.dataset import Dataset

from plugins.training import checkpoint
from plugins.data import datasets
from plugins.evaluation import protocol as evaluation
from plugins.data import images
from plugins.data import samplers

EXAMPLE_LAYOUT = ('market1501/Market-1501-v15.09.15/{bounding_box_train,query,bounding_box_test}/'
                  '*.jpg for market1501')


def offline_dataset_check(self, dataset_dir, dataset_url):
    """Replaces ``Dataset.download_dataset``: nothing is downloaded, a missing folder is named."""
    if osp.exists(dataset_dir):
        return
    raise FileNotFoundError(
        '{} dataset not found: expected the folder "{}" under --root/data.root. Nothing is '
        'downloaded: extract the dataset there in its original layout (e.g. {}).'.format(
            type(self).__name__, dataset_dir, EXAMPLE_LAYOUT))


def install_host_fixes():
    """Apply every fix; safe to call more than once."""
    checkpoint.install()
    samplers.install()
    evaluation.patch_host_cuhk03_metric()
    metrics.evaluate_rank = evaluation.evaluate_rank
    metrics.compute_distance_matrix = evaluation.compute_distance_matrix
    datasets.register()
    Dataset.download_dataset = offline_dataset_check
    images.install()
