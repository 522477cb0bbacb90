"""Narrow runtime fixes for gaps of the PyPI ``torchreid==0.2.5`` package.

Each fix replaces one host name with ours and has a test in ``tests/plugins``:

* checkpoints: ``weights_only`` loading with a numpy-scalar allow-list, plain
  numbers and atomic writes when saving (:mod:`plugins.checkpoint`);
* evaluation: the engine's ``metrics.evaluate_rank`` becomes our vectorised
  one (same results; the wheel has no compiled evaluation), and the CUHK03
  metric stops using ``np.bool`` (missing in numpy 1.24-1.26, an alias again
  since numpy 2) (:mod:`plugins.evaluation`);
* samplers: ``build_train_sampler`` also builds registered samplers
  (:mod:`plugins.samplers`);
* datasets: ``synthreid`` is registered (:mod:`plugins.datasets`).
"""
from torchreid.reid import metrics

from . import checkpoint, datasets, evaluation, samplers


def install_host_fixes():
    """Apply every fix; safe to call more than once."""
    checkpoint.install()
    samplers.install()
    evaluation.patch_host_cuhk03_metric()
    metrics.evaluate_rank = evaluation.evaluate_rank
    datasets.register()
