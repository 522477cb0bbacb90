"""Tests for plugins.data.samplers: batch composition, epoch length, determinism and the
hook into torchreid's sampler builder. Synthetic data sources only, no images."""

import random
from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from torch.utils.data.sampler import RandomSampler

import torchreid.reid.data.datamanager as host_datamanager
import torchreid.reid.data.datasets as host_datasets
import torchreid.reid.data.sampler as host_sampler
from torchreid.reid.data import ImageDataManager, ImageDataset

from plugins.data import samplers
from plugins.data.samplers import (
    SAMPLERS, PairwiseSampler, PKSampler, SamplerChoice, build_train_sampler, install, pair_labels,
    register_sampler, sampler_choice
)

NUM_IDS = 20


def pid_of(p):
    """Sparse, non-contiguous pid labels so nothing relies on pids being 0..N-1."""
    return 7 * p + 3


def make_source():
    """20 identities with 1..9 images; every 4th identity is seen by one camera only."""
    source = []
    for p in range(NUM_IDS):
        for j in range(p % 9 + 1):
            cam = 0 if p % 4 == 0 else j % 3
            source.append(('img_{}_{}.jpg'.format(p, j), pid_of(p), cam, 0))
    return source


@pytest.fixture
def source():
    return make_source()


@pytest.fixture
def installed(monkeypatch):
    """install() for one test; monkeypatch puts the host functions back afterwards."""
    monkeypatch.setattr(host_sampler, 'build_train_sampler', host_sampler.build_train_sampler)
    monkeypatch.setattr(
        host_datamanager, 'build_train_sampler', host_datamanager.build_train_sampler
    )
    install()


def pids_at(source, indices):
    return np.array([source[i][1] for i in indices])


def image_counts(source):
    return Counter(item[1] for item in source)


# ----------------------------------------------------------------------------- PK


@pytest.mark.parametrize('batch_size,k', [(16, 4), (12, 3), (8, 2), (9, 9), (20, 1), (6, 6)])
def test_pk_every_batch_is_p_ids_times_k_images(source, batch_size, k):
    sampler = PKSampler(source, batch_size=batch_size, num_instances=k)
    indices = list(sampler)
    assert len(indices) == len(sampler)
    assert len(indices) % batch_size == 0
    for start in range(0, len(indices), batch_size):
        chunk = indices[start:start + batch_size]
        pids = pids_at(source, chunk)
        counts = Counter(pids.tolist())
        assert len(counts) == batch_size // k
        assert set(counts.values()) == {k}
        # the K images of an identity are adjacent
        assert all(len(set(pids[i:i + k])) == 1 for i in range(0, batch_size, k))
        # identities with at least K images contribute K distinct images
        for i in range(0, batch_size, k):
            if image_counts(source)[pids[i]] >= k:
                assert len(set(chunk[i:i + k])) == k


@pytest.mark.parametrize('batch_size,k', [(16, 4), (12, 3), (8, 2), (9, 9), (20, 1)])
def test_pk_every_identity_every_epoch(source, batch_size, k):
    sampler = PKSampler(source, batch_size=batch_size, num_instances=k, seed=3)
    for _ in range(3):
        assert set(pids_at(source, list(sampler)).tolist()) == set(image_counts(source))


def test_pk_small_identities_are_filled_with_their_own_images(source):
    counts = image_counts(source)
    sampler = PKSampler(source, batch_size=16, num_instances=4)
    indices = np.array(list(sampler)).reshape(-1, 4)
    for group in indices:
        pid = source[group[0]][1]
        own = {i for i, item in enumerate(source) if item[1] == pid}
        assert set(group) <= own
        if counts[pid] < 4:
            assert set(group) == own  # all of its images, topped up by repeats
        if counts[pid] == 1:
            assert group.tolist() == [group[0]] * 4


def test_pk_indices_are_valid(source):
    indices = list(PKSampler(source, batch_size=16, num_instances=4))
    assert all(isinstance(i, int) and 0 <= i < len(source) for i in indices)


def test_pk_length_uniform_identities():
    # 20 ids x 8 images, K=4: two groups each, 40 groups -> 10 batches of P=4
    source = [('x', p, 0, 0) for p in range(20) for _ in range(8)]
    sampler = PKSampler(source, batch_size=16, num_instances=4)
    assert len(sampler) == 160 == len(list(sampler))


def test_pk_length_pads_when_groups_cannot_cover_all_identities():
    # 6 ids x 5 images, K=4, P=4: 6 groups fill one batch, but covering all six ids
    # needs ceil(6 / 4) = 2 batches, so two identities get a second group.
    source = [('x', p, 0, 0) for p in range(6) for _ in range(5)]
    sampler = PKSampler(source, batch_size=16, num_instances=4)
    assert len(sampler) == 32
    indices = list(sampler)
    assert len(indices) == 32
    assert set(pids_at(source, indices).tolist()) == set(range(6))
    # the extra groups are fresh draws of distinct images too
    assert all(len(set(group)) == 4 for group in np.reshape(indices, (-1, 4)).tolist())


def test_pk_length_drops_groups_that_would_repeat_an_identity_in_a_batch():
    # pid 0 has 10 groups, pids 1..3 one each, P=2: pid 0 can be in at most one slot
    # per batch, so only 3 batches (6 groups) fit; 7 of pid 0's groups are dropped.
    source = [('x', 0, 0, 0)] * 40 + [('x', p, 0, 0) for p in (1, 2, 3) for _ in range(4)]
    sampler = PKSampler(source, batch_size=8, num_instances=4)
    assert len(sampler) == 24
    for _ in range(3):
        batches = pids_at(source, list(sampler)).reshape(3, 8)
        assert all(0 in batch for batch in batches)
        assert Counter(batches.ravel().tolist()) == {0: 12, 1: 4, 2: 4, 3: 4}


def test_pk_deterministic_per_seed_and_epoch(source):
    a = PKSampler(source, batch_size=16, num_instances=4, seed=7)
    b = PKSampler(source, batch_size=16, num_instances=4, seed=7)
    first = list(a)
    assert first == list(b)
    second = list(a)
    assert second != first  # next epoch differs
    assert list(b) == second
    a.set_epoch(0)
    assert list(a) == first
    assert list(PKSampler(source, batch_size=16, num_instances=4, seed=8)) != first


def test_pk_ignores_global_rng(source):
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    first = list(PKSampler(source, batch_size=16, num_instances=4))
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    assert list(PKSampler(source, batch_size=16, num_instances=4)) == first


def test_pk_rejects_batch_not_divisible_by_k(source):
    with pytest.raises(ValueError, match=r'batch_size=10.*num_instances=4'):
        PKSampler(source, batch_size=10, num_instances=4)


def test_pk_rejects_more_ids_per_batch_than_exist(source):
    with pytest.raises(ValueError, match='only 20'):
        PKSampler(source, batch_size=84, num_instances=4)


@pytest.mark.parametrize('kwargs', [{'num_instances': 0}, {'batch_size': 0}, {'seed': -1}])
def test_pk_rejects_bad_values(source, kwargs):
    with pytest.raises(ValueError):
        PKSampler(source, **kwargs)


def test_sampler_rejects_unknown_direct_kwargs(source):
    with pytest.raises(TypeError, match='bogus'):
        PKSampler(source, bogus=1)
    with pytest.raises(TypeError, match='num_instance'):
        PairwiseSampler(source, num_instance=4)
    # the host kwargs are accepted and ignored
    PairwiseSampler(source, batch_size=8, num_instances=4, num_cams=2, num_datasets=1)


def test_pk_through_dataloader(source):
    sampler = PKSampler(source, batch_size=12, num_instances=3, seed=1)
    labels = [item[1] for item in source]
    loader = DataLoader(labels, sampler=sampler, batch_size=12, drop_last=True)
    batches = list(loader)
    assert len(batches) == len(loader) == len(sampler) // 12
    for batch in batches:
        assert isinstance(batch, torch.Tensor)
        counts = Counter(batch.tolist())
        assert len(counts) == 4 and set(counts.values()) == {3}
    assert {p for batch in batches for p in batch.tolist()} == set(labels)


# ----------------------------------------------------------------------- Pairwise


def camera_count(source):
    cams = {}
    for _, pid, cam, _ in source:
        cams.setdefault(pid, set()).add(cam)
    return {pid: len(c) for pid, c in cams.items()}


@pytest.mark.parametrize('batch_size,pos_ratio', [
    (10, 0.5), (16, 0.5), (16, 0.3), (16, 0.0), (16, 1.0), (2, 0.5), (12, 0.25)
])
def test_pairwise_exact_positive_count_and_valid_pairs(source, batch_size, pos_ratio):
    sampler = PairwiseSampler(source, batch_size=batch_size, pos_ratio=pos_ratio, seed=2)
    indices = list(sampler)
    assert len(indices) == len(sampler) == (len(source) // (batch_size // 2)) * batch_size
    expected_pos = round(pos_ratio * batch_size / 2)
    pids = pids_at(source, indices)
    for start in range(0, len(indices), batch_size):
        labels = pair_labels(pids[start:start + batch_size])
        assert labels.dtype == bool and len(labels) == batch_size // 2
        assert labels.sum() == expected_pos
    for a, b in zip(indices[0::2], indices[1::2]):
        if source[a][1] == source[b][1]:
            assert a != b  # positives are two distinct images


def test_pairwise_camera_aware_positives_cross_cameras(source):
    cams = camera_count(source)
    sampler = PairwiseSampler(source, batch_size=16, pos_ratio=0.5)
    indices = list(sampler)
    checked = 0
    for a, b in zip(indices[0::2], indices[1::2]):
        pa, pb = source[a][1], source[b][1]
        if pa == pb:
            assert a != b
            if cams[pa] > 1:
                assert source[a][2] != source[b][2]
                checked += 1
        else:
            assert image_counts(source)[pa] >= 1
    assert checked > 0


def test_pairwise_without_camera_awareness_allows_same_camera(source):
    cams = camera_count(source)
    sampler = PairwiseSampler(source, batch_size=16, pos_ratio=1.0, camera_aware=False)
    same_cam = [
        a for a, b in zip(*[iter(list(sampler))] * 2)
        if cams[source[a][1]] > 1 and source[a][2] == source[b][2]
    ]
    assert same_cam


def test_pairwise_positive_anchors_have_two_images(source):
    counts = image_counts(source)
    indices = list(PairwiseSampler(source, batch_size=16, pos_ratio=0.75))
    for a, b in zip(indices[0::2], indices[1::2]):
        if source[a][1] == source[b][1]:
            assert counts[source[a][1]] > 1


def test_pairwise_negatives_differ_and_anchors_are_unique(source):
    sampler = PairwiseSampler(source, batch_size=16, pos_ratio=0.5, seed=4)
    indices = list(sampler)
    anchors = indices[0::2]
    # enough positive-capable images here, so every anchor is a different image
    assert len(set(anchors)) == len(anchors) == len(source) // 8 * 8
    negatives = [(a, b) for a, b in zip(anchors, indices[1::2]) if source[a][1] != source[b][1]]
    assert len(negatives) == len(anchors) // 2
    assert all(source[a][1] != source[b][1] for a, b in negatives)


def test_pairwise_deterministic_per_seed_and_epoch(source):
    a = PairwiseSampler(source, batch_size=16, seed=5)
    b = PairwiseSampler(source, batch_size=16, seed=5)
    first = list(a)
    assert first == list(b)
    second = list(a)
    assert second != first
    a.set_epoch(0)
    assert list(a) == first
    assert list(PairwiseSampler(source, batch_size=16, seed=6)) != first


def test_pairwise_rejects_odd_batch_and_bad_ratio(source):
    with pytest.raises(ValueError, match='even'):
        PairwiseSampler(source, batch_size=15)
    with pytest.raises(ValueError, match='pos_ratio'):
        PairwiseSampler(source, batch_size=16, pos_ratio=1.5)


def test_pairwise_rejects_positives_without_multi_image_identities():
    singles = [('x', p, 0, 0) for p in range(10)]
    with pytest.raises(ValueError, match='two images'):
        PairwiseSampler(singles, batch_size=4, pos_ratio=0.5)
    negatives_only = PairwiseSampler(singles, batch_size=4, pos_ratio=0.0)
    assert len(negatives_only) == len(list(negatives_only)) == 20


def test_pairwise_reuses_positive_anchors_when_too_few():
    # one identity with two images, nine singletons; every pair must be positive
    source = [('a', 0, 0, 0), ('b', 0, 1, 0)] + [('x', p, 0, 0) for p in range(1, 10)]
    sampler = PairwiseSampler(source, batch_size=4, pos_ratio=1.0)
    indices = list(sampler)
    assert len(indices) == len(sampler) == 20
    assert sorted(zip(indices[0::2], indices[1::2])) == [(0, 1)] * 5 + [(1, 0)] * 5


def test_pairwise_through_dataloader(source):
    labels = [item[1] for item in source]
    sampler = PairwiseSampler(source, batch_size=8, pos_ratio=0.5)
    for batch in DataLoader(labels, sampler=sampler, batch_size=8, drop_last=True):
        flags = pair_labels(batch)
        assert isinstance(flags, torch.Tensor) and flags.dtype == torch.bool
        assert int(flags.sum()) == 2


def test_pair_labels():
    assert pair_labels([1, 1, 2, 3]).tolist() == [True, False]
    assert pair_labels(torch.tensor([4, 5, 6, 6])).tolist() == [False, True]
    with pytest.raises(ValueError, match='even'):
        pair_labels([1, 2, 3])


# --------------------------------------------------------- registry / host hook


def test_install_dispatches_registered_and_builtin_names(source, installed):
    for module in (host_sampler, host_datamanager):
        build = module.build_train_sampler
        assert build is build_train_sampler
        pk = build(source, 'PKSampler', batch_size=16, num_instances=4)
        assert isinstance(pk, PKSampler) and pk.num_pids_per_batch == 4
        assert isinstance(build(source, 'PairwiseSampler', batch_size=8), PairwiseSampler)
        assert isinstance(
            build(source, 'RandomIdentitySampler', batch_size=16, num_instances=4),
            host_sampler.RandomIdentitySampler
        )
        assert isinstance(build(source, 'RandomSampler'), RandomSampler)


def test_install_is_idempotent(source, installed):
    install()
    install()
    assert host_sampler.build_train_sampler is build_train_sampler
    assert isinstance(build_train_sampler(source, 'RandomSampler'), RandomSampler)


def test_host_rejects_our_names_without_install(source, monkeypatch):
    original = build_train_sampler.host_build_train_sampler
    monkeypatch.setattr(host_sampler, 'build_train_sampler', original)
    with pytest.raises(AssertionError):
        host_sampler.build_train_sampler(source, 'PKSampler')


def test_unknown_name_lists_builtin_and_registered(source):
    with pytest.raises(KeyError) as info:
        build_train_sampler(source, 'NoSuchSampler')
    message = str(info.value)
    for name in ['NoSuchSampler', 'RandomIdentitySampler', 'RandomSampler', 'PKSampler',
                 'PairwiseSampler']:
        assert name in message


def test_options_travel_with_the_sampler_name(source):
    choice = sampler_choice('PKSampler', seed=11)
    assert choice == 'PKSampler' and isinstance(choice, SamplerChoice)
    sampler = build_train_sampler(source, choice, batch_size=16, num_instances=4)
    assert sampler.seed == 11
    assert list(sampler) == list(PKSampler(source, batch_size=16, num_instances=4, seed=11))
    pairwise = build_train_sampler(source, sampler_choice('PairwiseSampler', pos_ratio=0.25,
                                                          camera_aware=False), batch_size=16)
    assert pairwise.num_pos == 2 and not pairwise.camera_aware
    # build-time kwargs override the carried options; a plain name gets the defaults
    assert build_train_sampler(source, choice, seed=12).seed == 12
    assert build_train_sampler(source, 'PKSampler').seed == 0


def test_unknown_option_names_sampler_and_accepted_options(source):
    with pytest.raises(TypeError, match=r"'PKSampler'.*\['typo'\].*\['seed'\]"):
        sampler_choice('PKSampler', typo=1)
    with pytest.raises(TypeError, match=r"'PairwiseSampler'.*camera_aware.*pos_ratio.*seed"):
        build_train_sampler(source, 'PairwiseSampler', batch_size=8, ratio=0.5)


def test_options_for_builtin_or_unknown_samplers():
    assert sampler_choice('RandomSampler') == 'RandomSampler'  # no options: allowed
    with pytest.raises(TypeError, match='RandomSampler'):
        sampler_choice('RandomSampler', seed=1)
    with pytest.raises(KeyError, match='PKSampler'):
        sampler_choice('NoSuchSampler', seed=1)


@pytest.fixture
def temp_name():
    name = 'TestOnlySampler'
    yield name
    if name in SAMPLERS:
        SAMPLERS.unregister(name)


def test_register_custom_sampler_with_decorator(source, temp_name, installed):
    @register_sampler(temp_name)
    class FirstImages(torch.utils.data.Sampler):
        def __init__(self, data_source, batch_size=32, count=4, **unused_host_kwargs):
            samplers.check_host_kwargs('FirstImages', unused_host_kwargs)
            self.batch_size, self.count = batch_size, count

        def __iter__(self):
            return iter(range(self.count))

        def __len__(self):
            return self.count

    built = host_datamanager.build_train_sampler(source, sampler_choice(temp_name, count=3), batch_size=5)
    assert isinstance(built, FirstImages) and list(built) == [0, 1, 2]
    assert built.batch_size == 5
    with pytest.raises(TypeError, match=r"\['count'\]"):
        sampler_choice(temp_name, batch=1)


def test_duplicate_and_builtin_registration_raise(temp_name):
    with pytest.raises(KeyError, match='Duplicate'):
        register_sampler('PKSampler', PKSampler)
    for name in host_sampler.AVAI_SAMPLERS:
        with pytest.raises(KeyError, match='built-in'):
            register_sampler(name, PKSampler)
    register_sampler(temp_name, PKSampler)
    with pytest.raises(KeyError, match='Duplicate'):
        register_sampler(temp_name, PairwiseSampler)
    assert host_sampler.AVAI_SAMPLERS == [
        'RandomIdentitySampler', 'SequentialSampler', 'RandomSampler',
        'RandomDomainSampler', 'RandomDatasetSampler'
    ]


class SyntheticReID(ImageDataset):
    """Image dataset with paths that are never read: enough to build a datamanager."""

    def __init__(self, root='', **kwargs):
        source = make_source()
        super().__init__(source, source[:4], source[4:8], **kwargs)


@pytest.fixture
def synthetic_dataset(monkeypatch):
    name = 'synthetic_samplers_test'
    monkeypatch.setitem(vars(host_datasets)['__image_datasets'], name, SyntheticReID)
    return name


@pytest.mark.parametrize('name,cls', [
    ('PKSampler', PKSampler),
    ('RandomIdentitySampler', host_sampler.RandomIdentitySampler),
    ('RandomSampler', RandomSampler),
])
def test_image_datamanager_builds_chosen_sampler(synthetic_dataset, installed, name, cls):
    manager = ImageDataManager(
        root='unused', sources=synthetic_dataset, height=32, width=16, use_gpu=False,
        workers=0, batch_size_train=16, num_instances=4,
        train_sampler=sampler_choice(name, seed=9) if name == 'PKSampler' else name
    )
    sampler = manager.train_loader.sampler
    assert type(sampler) is cls
    if cls is PKSampler:
        assert sampler.seed == 9
        assert len(manager.train_loader) == len(sampler) // 16
