"""Fixtures shared by every test; the helpers they and the tests use live in ``tests/helpers.py``."""
import os

import pytest
import torch

from tests.helpers import MARKET_SUBSET_IDS


@pytest.fixture
def tiny_batch():
    g = torch.Generator().manual_seed(0)
    return {'img': torch.randn(8, 3, 16, 8, generator=g), 'pid': torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]),
            'camid': torch.zeros(8, dtype=torch.long)}


@pytest.fixture(scope='session')
def market_subset(tmp_path_factory):
    """A 40-identity Market-1501 cut from the tarball at ``$REID_MARKET1501_TAR`` (set by
    ``.ci/run`` to the shared copy); the folder to pass as ``--root``.

    Outside CI a missing tarball skips the real-data tests; in CI it fails them.
    """
    from plugins.data.datasets.market_subset import ENV_VAR, extract_market_subset
    tarball = os.environ.get(ENV_VAR, '')
    if not os.path.isfile(tarball):
        message = '${} does not name the Market-1501 tarball (got {!r})'.format(ENV_VAR, tarball)
        if os.environ.get('CI'):
            pytest.fail(message)
        pytest.skip(message)
    root = str(tmp_path_factory.mktemp('market1501_subset'))
    return extract_market_subset(tarball, root, MARKET_SUBSET_IDS, MARKET_SUBSET_IDS, 100, seed=0)
