"""A small real Market-1501 for tests and CPU benchmarks, cut from the release tarball.

``extract_market_subset(tarball, root, ...)`` writes
``root/market1501/Market-1501-v15.09.15/{bounding_box_train,query,bounding_box_test}``
with every image of ``num_train_ids`` training identities, the query and gallery
images of ``num_test_ids`` test identities, and ``num_distractors`` of the
gallery's distractors (pid 0): torchreid's own ``market1501`` loader reads it as
is. Identities are drawn with ``seed``; a ``subset.json`` records the choice so a
second call with the same arguments reuses the folder. Images are only ever
written outside the repository (Market-1501 is research-only: never commit it).

CLI: ``python tools/market_subset.py --tarball market1501.tar.gz --root DIR``.
"""
import json
import os
import os.path as osp
import shutil
import tarfile
import tempfile

import numpy as np

RELEASE = osp.join('market1501', 'Market-1501-v15.09.15')
SPLITS = ('bounding_box_train', 'query', 'bounding_box_test')
ENV_VAR = 'REID_MARKET1501_TAR'  # where tests and benchmarks find the release tarball


def _split_and_pid(name):
    """``(split, pid)`` of a release image path, or None for anything else."""
    parts = name.split('/')
    if len(parts) != 4 or '/'.join(parts[:2]) != RELEASE.replace(os.sep, '/') \
            or parts[2] not in SPLITS or not parts[3].endswith('.jpg'):
        return None
    return parts[2], int(parts[3].split('_')[0])


def choose_images(names, num_train_ids, num_test_ids, num_distractors, seed):
    """The member names of the subset, from ``(name, (split, pid) or None)`` pairs."""
    rng = np.random.default_rng(seed)
    by_split = {split: {} for split in SPLITS}
    for name, key in names:
        if key is not None:
            by_split[key[0]].setdefault(key[1], []).append(name)
    train_pids = sorted(by_split['bounding_box_train'])
    test_pids = sorted(set(by_split['query']) & set(by_split['bounding_box_test']))
    if num_train_ids > len(train_pids) or num_test_ids > len(test_pids):
        raise ValueError('The tarball has {} training and {} test identities; asked for {} and {}'.format(
            len(train_pids), len(test_pids), num_train_ids, num_test_ids))
    train = rng.choice(train_pids, num_train_ids, replace=False)
    test = rng.choice(test_pids, num_test_ids, replace=False)
    distractors = sorted(by_split['bounding_box_test'].get(0, []))
    chosen = [n for pid in train for n in by_split['bounding_box_train'][pid]]
    chosen += [n for pid in test for split in ('query', 'bounding_box_test') for n in by_split[split][pid]]
    if num_distractors:
        chosen += list(rng.choice(distractors, min(num_distractors, len(distractors)), replace=False))
    return set(chosen)


def extract_market_subset(tarball, root, num_train_ids=40, num_test_ids=40, num_distractors=100,
                          seed=0):
    """Write the subset under ``root`` (see the module doc); returns ``root``."""
    spec = {'tarball': osp.basename(tarball), 'num_train_ids': num_train_ids,
            'num_test_ids': num_test_ids, 'num_distractors': num_distractors, 'seed': seed}
    target = osp.join(root, RELEASE)
    record = osp.join(target, 'subset.json')
    if osp.isfile(record):
        with open(record) as f:
            if json.load(f) == spec:
                return root
    elif osp.exists(osp.join(root, 'market1501')):
        raise ValueError('"{}" already holds a market1501 folder that is not a subset written '
                         'by this tool; choose another --root'.format(root))
    if not osp.isfile(tarball):
        raise FileNotFoundError('Market-1501 tarball not found: "{}" (set {} or pass the path of '
                                'market1501.tar.gz)'.format(tarball, ENV_VAR))
    os.makedirs(root, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix='.market-subset-', dir=root)
    try:
        with tarfile.open(tarball, 'r:gz') as tar:
            members = [m for m in tar.getmembers() if m.isfile()]
            chosen = choose_images([(m.name, _split_and_pid(m.name)) for m in members],
                                   num_train_ids, num_test_ids, num_distractors, seed)
            tar.extractall(tmp, members=[m for m in members if m.name in chosen], filter='data')
        for split in SPLITS:
            os.makedirs(osp.join(tmp, RELEASE, split), exist_ok=True)
        with open(osp.join(tmp, RELEASE, 'subset.json'), 'w') as f:
            json.dump(spec, f)
        if osp.exists(osp.join(root, 'market1501')):
            shutil.rmtree(osp.join(root, 'market1501'))  # an older subset (checked above)
        os.rename(osp.join(tmp, 'market1501'), osp.join(root, 'market1501'))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root
