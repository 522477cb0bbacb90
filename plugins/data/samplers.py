"""Training samplers chosen by name, next to torchreid's built-in ones.

torchreid picks its training sampler with a fixed if/elif over
``torchreid.reid.data.sampler.AVAI_SAMPLERS`` inside ``build_train_sampler``, and
``torchreid.reid.data.datamanager`` holds its own reference to that function.
This module keeps a :class:`~plugins.registry.Registry` of extra samplers, a
drop-in :func:`build_train_sampler` that dispatches registered names to it and
every built-in name to the host's original function, and :func:`install`, which
points both host module references at ours so that
``ImageDataManager(train_sampler='PKSampler', ...)`` works unchanged.

Construction contract for a registered sampler class::

    cls(data_source, batch_size=..., num_instances=..., num_cams=..., num_datasets=...,
        **options)

``data_source`` is torchreid's list of ``(img_path, pid, camid, dsetid)`` tuples.
The four host keyword arguments are always passed (``ImageDataManager`` only
knows those), so a class takes the ones it uses as named parameters and swallows
the rest with ``**unused_host_kwargs`` checked by :func:`check_host_kwargs`.
``options`` are the class's other named keyword parameters; the host cannot pass
them, so they travel with the name: the launcher passes ``train_sampler`` as
:func:`sampler_choice` ``(name, shard_seed, **options)``, a string that carries them.
"""

import inspect

import numpy as np
import torch
from torch.utils.data import Sampler

from torchreid.reid.data import datamanager as _host_datamanager
from torchreid.reid.data import sampler as _host_sampler

from plugins import distributed
from plugins.registry import SAMPLERS

__all__ = [
    'SAMPLERS', 'HOST_KWARGS', 'SamplerChoice', 'register_sampler', 'sampler_choice',
    'build_train_sampler', 'install', 'check_host_kwargs', 'PKSampler',
    'PairwiseSampler', 'pair_labels'
]

#: Keyword arguments the host's datamanagers pass to every training sampler.
HOST_KWARGS = ('batch_size', 'num_instances', 'num_cams', 'num_datasets')

# The host's own builder. If this module is imported a second time after
# install() (reload, or under another module name), the host attribute is
# already ours, so take the original it carries instead of wrapping ourselves.
_HOST_BUILD = getattr(
    _host_sampler.build_train_sampler, 'host_build_train_sampler',
    _host_sampler.build_train_sampler
)

def _builtin_names():
    return list(_host_sampler.AVAI_SAMPLERS)


def _unknown_sampler(name):
    return KeyError(
        'Unknown train_sampler {!r}. Built-in samplers: {}; registered samplers: {}'.format(
            name, _builtin_names(), SAMPLERS.names()
        )
    )


def register_sampler(name, cls=None):
    """Register sampler class ``cls`` as ``name``; also usable as ``@register_sampler(name)``.

    Raises:
        KeyError: ``name`` is already registered, or is one of torchreid's built-in
            sampler names (those always go to the host's builder).
    """
    if cls is None:
        return lambda c: register_sampler(name, c)
    if name in _builtin_names():
        raise KeyError(
            'Sampler name {!r} collides with a torchreid built-in sampler {}'.format(
                name, _builtin_names()
            )
        )
    return SAMPLERS.register(name, cls)


def check_host_kwargs(owner, kwargs):
    """Raise ``TypeError`` if ``kwargs`` holds anything but the host's sampler kwargs.

    Sampler classes call this on their ``**unused_host_kwargs`` so that a typo in a
    direct call is not silently swallowed.
    """
    unexpected = sorted(set(kwargs) - set(HOST_KWARGS))
    if unexpected:
        raise TypeError(
            '{}() got unexpected keyword argument(s) {}; only the host kwargs {} are '
            'accepted besides its own parameters'.format(owner, unexpected, list(HOST_KWARGS))
        )


def _accepted_options(cls):
    """Named keyword parameters of ``cls`` other than ``data_source`` and the host kwargs."""
    params = list(inspect.signature(cls).parameters.values())
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return sorted(
        p.name for p in params[1:] if p.kind in named and p.name not in HOST_KWARGS
    )


def _check_options(name, options):
    accepted = _accepted_options(SAMPLERS.get(name))
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(
            'Sampler {!r} got unknown option(s) {}; accepted options: {}'.format(
                name, unknown, accepted
            )
        )


class SamplerChoice(str):
    """A sampler name that carries its options and the run's shard seed.

    The host's data managers hand ``train_sampler`` unchanged to the sampler builder, so the
    launcher passes one of these as ``train_sampler``: the config's options reach
    :func:`build_train_sampler` with the name, not through module state.
    """

    def __new__(cls, name, options=None, shard_seed=0):
        choice = super().__new__(cls, name)
        choice.options, choice.shard_seed = dict(options or {}), int(shard_seed)
        return choice


def sampler_choice(name, shard_seed=0, **options):
    """``name`` as a :class:`SamplerChoice` with ``options`` for its sampler and ``shard_seed``,
    the seed with which distributed runs draw each epoch's global order (``train.seed``).

    Raises:
        TypeError: an option is not a parameter of the sampler (the message lists the
            accepted ones), or options were given for a built-in sampler (they take none).
        KeyError: ``name`` is neither built-in nor registered.
    """
    if name in SAMPLERS:
        _check_options(name, options)
    elif name in _builtin_names():
        if options:
            raise TypeError(
                'Built-in sampler {!r} takes no options, got {}'.format(name, sorted(options))
            )
    else:
        raise _unknown_sampler(name)
    return SamplerChoice(name, options, shard_seed)


def build_train_sampler(
    data_source,
    train_sampler,
    batch_size=32,
    num_instances=4,
    num_cams=1,
    num_datasets=1,
    **kwargs
):
    """Drop-in replacement for ``torchreid.reid.data.sampler.build_train_sampler``.

    Registered names build the registered class with the options ``train_sampler`` carries
    (a :class:`SamplerChoice`), updated by ``kwargs``; built-in names go to the
    host's original function (which ignores ``kwargs``, as before).

    In a distributed run ``batch_size`` is the per-rank batch the loader uses: the
    sampler is built for the global batch and wrapped in
    :class:`plugins.distributed.BatchShard`, which hands this rank its slice.

    Raises:
        KeyError: unknown name (the message lists built-in and registered names).
        TypeError: unknown option for a registered sampler.
    """
    world = distributed.get_world_size()
    host_kwargs = dict(
        batch_size=batch_size * world,
        num_instances=num_instances,
        num_cams=num_cams,
        num_datasets=num_datasets
    )
    if train_sampler in SAMPLERS:
        options = {**getattr(train_sampler, 'options', {}), **kwargs}
        _check_options(train_sampler, options)
        sampler = SAMPLERS.get(train_sampler)(data_source, **host_kwargs, **options)
    elif train_sampler in _builtin_names():
        sampler = _HOST_BUILD(data_source, train_sampler, **host_kwargs, **kwargs)
    else:
        raise _unknown_sampler(train_sampler)
    if world > 1:
        _check_shardable(sampler, world)
        sampler = distributed.BatchShard(sampler, batch_size * world,
                                         seed=getattr(train_sampler, 'shard_seed', 0))
    return sampler


build_train_sampler.host_build_train_sampler = _HOST_BUILD


def _check_shardable(sampler, world):
    """Each rank must get whole identities (PK) or whole pairs (pairwise)."""
    for attr, unit in (('num_pids_per_batch', 'identities'), ('pairs_per_batch', 'pairs')):
        count = getattr(sampler, attr, None)
        if count is not None and count % world:
            raise ValueError('{}: a global batch of {} {} cannot be split evenly over {} '
                             'processes; change train.batch_size'.format(
                                 type(sampler).__name__, count, unit, world))


def install():
    """Make torchreid's datamanagers build samplers through :func:`build_train_sampler`.

    ``datamanager`` imported the host function by name, so both module attributes
    are replaced. ``ImageDataManager`` does not check the sampler name itself, so
    nothing else needs patching. Safe to call any number of times.
    """
    _host_sampler.build_train_sampler = build_train_sampler
    _host_datamanager.build_train_sampler = build_train_sampler


def _positive_int(owner, name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError('{}: {} must be a positive int, got {!r}'.format(owner, name, value))
    return int(value)


def _seed(owner, seed):
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError('{}: seed must be a non-negative int, got {!r}'.format(owner, seed))
    return int(seed)


def _indices_by_pid(data_source):
    """``(pids, [index array per pid])`` in order of first appearance."""
    by_pid = {}
    for index, items in enumerate(data_source):
        by_pid.setdefault(items[1], []).append(index)
    return list(by_pid), [np.asarray(idxs, dtype=np.int64) for idxs in by_pid.values()]


class _EpochSeeded(Sampler):
    """Per-epoch RNG ``default_rng([seed, epoch])``; ``__iter__`` advances the epoch.

    Calling :meth:`set_epoch` before each epoch (as with ``DistributedSampler``)
    gives the same result as letting the counter advance by itself.
    """

    def _epoch_rng(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        return rng

    def set_epoch(self, epoch):
        """Make the next ``__iter__`` produce epoch ``epoch``."""
        self.epoch = int(epoch)


def _draw_group(rng, idxs, k):
    """K images of one identity: distinct when it has at least K, otherwise all of its
    images plus ``k - n`` drawn with replacement from them."""
    if len(idxs) >= k:
        return rng.choice(idxs, k, replace=False)
    return rng.permutation(np.concatenate([idxs, rng.choice(idxs, k - len(idxs))]))


def _pk_num_batches(num_groups, p):
    """Batches per epoch: ``max(B_fit, ceil(N / P))`` (see :class:`PKSampler`).

    ``f(B) = sum(min(g, B)) - P * B`` is concave with ``f(0) = 0``, so the B with
    ``f(B) >= 0`` form an interval starting at 0 and B_fit is found by bisection.
    """
    lo, hi = 0, int(num_groups.sum()) // p
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if np.minimum(num_groups, mid).sum() >= p * mid:
            lo = mid
        else:
            hi = mid - 1
    return max(lo, -(-len(num_groups) // p))


@register_sampler('PKSampler')
class PKSampler(_EpochSeeded):
    """P identities x K images per batch, with an exact, seed-independent length.

    K is ``num_instances`` and P is ``batch_size // K``. Every consecutive chunk of
    ``batch_size`` indices holds exactly P distinct identities, each with K images
    placed next to each other, and every identity appears at least once per epoch
    (torchreid's ``RandomIdentitySampler`` guarantees neither and only estimates its
    length).

    One epoch:

    1. Each identity with n images has ``g = max(1, n // K)`` K-groups: for n >= K a
       fresh shuffle cut into ``n // K`` groups of distinct images (the ``n % K``
       left over differ per epoch); for n < K one group of all n images filled up
       with ``K - n`` draws with replacement (an identity with one image appears as
       K copies of it).
    2. The epoch has ``B = max(B_fit, ceil(N / P))`` batches, N = number of
       identities, where B_fit is the largest B with ``sum(min(g, B)) >= P * B``:
       the most batches that the groups can fill with distinct identities per batch.
       Each identity is used ``min(g, B)`` times (no identity can be in a batch
       twice); surplus groups (beyond the first of each identity) are dropped at
       random until ``P * B`` remain. When ``B = ceil(N / P) > B_fit`` (too few
       groups to cover every identity), randomly chosen identities with room get
       extra freshly drawn groups instead.
    3. Identities are laid out in a random order, each as a run of its groups, and
       position i goes to batch ``i % B``; a run is at most B long, so its groups
       land in different batches. Batches are then shuffled.

    ``len(sampler) == B * batch_size`` is exactly the number of indices yielded and
    depends only on the identity counts, K and P, never on the seed.
    """

    def __init__(self, data_source, batch_size=32, num_instances=4, seed=0, **unused_host_kwargs):
        check_host_kwargs(type(self).__name__, unused_host_kwargs)
        batch_size = _positive_int('PKSampler', 'batch_size', batch_size)
        num_instances = _positive_int('PKSampler', 'num_instances', num_instances)
        if batch_size % num_instances:
            raise ValueError(
                'PKSampler: batch_size={} is not divisible by num_instances={}'.format(
                    batch_size, num_instances
                )
            )
        self.batch_size = batch_size
        self.num_instances = num_instances
        self.num_pids_per_batch = batch_size // num_instances
        self.seed = _seed('PKSampler', seed)
        self.epoch = 0
        self.pids, self._pid_indices = _indices_by_pid(data_source)
        if len(self.pids) < self.num_pids_per_batch:
            raise ValueError(
                'PKSampler: batch_size={} // num_instances={} needs {} identities per '
                'batch, but data_source has only {}'.format(
                    batch_size, num_instances, self.num_pids_per_batch, len(self.pids)
                )
            )
        self._num_groups = np.array(
            [max(1, len(idxs) // num_instances) for idxs in self._pid_indices]
        )
        self.num_batches = _pk_num_batches(self._num_groups, self.num_pids_per_batch)

    def _draw_usage(self, rng):
        """Groups per identity this epoch: each in [1, B], summing to P * B."""
        n, b = len(self._num_groups), self.num_batches
        usage = np.minimum(self._num_groups, b)
        diff = self.num_pids_per_batch * b - int(usage.sum())
        if diff < 0:
            surplus = np.repeat(np.arange(n), usage - 1)
            usage -= np.bincount(rng.choice(surplus, -diff, replace=False), minlength=n)
        elif diff > 0:
            room = np.repeat(np.arange(n), b - usage)
            usage += np.bincount(rng.choice(room, diff, replace=False), minlength=n)
        return usage

    def _draw_groups(self, rng, idxs, count):
        k = self.num_instances
        full = rng.permutation(idxs)[:len(idxs) // k * k].reshape(-1, k)[:count]
        extra = [_draw_group(rng, idxs, k) for _ in range(count - len(full))]
        return list(full) + extra

    def __iter__(self):
        rng = self._epoch_rng()
        usage = self._draw_usage(rng)
        groups = []
        for i in rng.permutation(len(self.pids)):
            groups.extend(self._draw_groups(rng, self._pid_indices[i], usage[i]))
        b, p, k = self.num_batches, self.num_pids_per_batch, self.num_instances
        batches = np.stack(groups).reshape(p, b, k).transpose(1, 0, 2)
        return iter(batches[rng.permutation(b)].reshape(-1).tolist())

    def __len__(self):
        return self.num_batches * self.batch_size


@register_sampler('PairwiseSampler')
class PairwiseSampler(_EpochSeeded):
    """Batches of (anchor, partner) pairs for verification / contrastive losses.

    Pair i of a batch is at positions ``2i`` (anchor) and ``2i + 1`` (partner); use
    :func:`pair_labels` on the batch's pids to get the targets. Each batch has
    exactly ``round(pos_ratio * batch_size / 2)`` positive pairs (Python ``round``,
    ties to even), in shuffled order among the negatives.

    * Positive: two distinct images of one identity. With ``camera_aware`` and an
      identity seen by more than one camera the partner comes from another camera
      than the anchor; otherwise from any camera. An identity with a single image
      cannot anchor a positive pair (it still anchors negatives and can be a
      negative partner).
    * Negative: the partner's identity is drawn uniformly from the other identities
      (so frequent identities do not dominate), then an image of it uniformly.

    Epoch: a seeded permutation of all images gives the anchors, one per image,
    truncated to whole batches: ``len(sampler) == (len(data_source) // (batch_size //
    2)) * batch_size``. Positive slots take the positive-capable images in
    permutation order and negative slots take the remaining images in permutation
    order, so each image anchors exactly once except for the tail cut by the
    truncation, unless positive slots outnumber the positive-capable images (then
    those are reused cyclically and the surplus singletons are what gets cut).
    """

    def __init__(
        self,
        data_source,
        batch_size=32,
        pos_ratio=0.5,
        camera_aware=True,
        seed=0,
        **unused_host_kwargs
    ):
        check_host_kwargs(type(self).__name__, unused_host_kwargs)
        batch_size = _positive_int('PairwiseSampler', 'batch_size', batch_size)
        if batch_size % 2:
            raise ValueError('PairwiseSampler: batch_size={} must be even'.format(batch_size))
        if not 0.0 <= pos_ratio <= 1.0:
            raise ValueError(
                'PairwiseSampler: pos_ratio must be in [0, 1], got {!r}'.format(pos_ratio)
            )
        self.batch_size = batch_size
        self.pairs_per_batch = batch_size // 2
        self.num_pos = round(pos_ratio * self.pairs_per_batch)
        self.num_neg = self.pairs_per_batch - self.num_pos
        self.camera_aware = bool(camera_aware)
        self.seed = _seed('PairwiseSampler', seed)
        self.epoch = 0

        self.pids, self._pid_indices = _indices_by_pid(data_source)
        n_images = len(data_source)
        self._pid_of = np.empty(n_images, dtype=np.int64)  # position in self.pids
        self._rank_in_pid = np.empty(n_images, dtype=np.int64)
        for i, idxs in enumerate(self._pid_indices):
            self._pid_of[idxs] = i
            self._rank_in_pid[idxs] = np.arange(len(idxs))
        camids = np.array([items[2] for items in data_source])
        # (pid position, camid) -> images of that identity from other cameras, only
        # for identities seen by several cameras
        self._other_cams = {}
        if self.camera_aware:
            for i, idxs in enumerate(self._pid_indices):
                cams = camids[idxs]
                if len(np.unique(cams)) > 1:
                    for cam in np.unique(cams):
                        self._other_cams[i, cam.item()] = idxs[cams != cam]
        self._camids = camids
        pid_sizes = np.array([len(idxs) for idxs in self._pid_indices])
        self._capable = pid_sizes[self._pid_of] > 1

        self.num_batches = n_images // self.pairs_per_batch
        if self.num_batches == 0:
            raise ValueError(
                'PairwiseSampler: {} images cannot fill one batch of {} pairs'.format(
                    n_images, self.pairs_per_batch
                )
            )
        if self.num_pos and not self._capable.any():
            raise ValueError(
                'PairwiseSampler: pos_ratio={} needs positive pairs but no identity has '
                'two images'.format(pos_ratio)
            )
        if self.num_neg and len(self.pids) < 2:
            raise ValueError(
                'PairwiseSampler: pos_ratio={} needs negative pairs but data_source has a '
                'single identity'.format(pos_ratio)
            )

    def _positive_partner(self, anchor, u):
        i = self._pid_of[anchor]
        others = self._other_cams.get((i, self._camids[anchor].item()))
        if others is not None:
            return others[int(u * len(others))]
        idxs = self._pid_indices[i]
        r = int(u * (len(idxs) - 1))
        return idxs[r + (r >= self._rank_in_pid[anchor])]

    def _negative_partner(self, anchor, u, v):
        i = self._pid_of[anchor]
        r = int(u * (len(self.pids) - 1))
        idxs = self._pid_indices[r + (r >= i)]
        return idxs[int(v * len(idxs))]

    def __iter__(self):
        rng = self._epoch_rng()
        b, m = self.num_batches, self.pairs_per_batch
        n_pos, n_neg = self.num_pos * b, self.num_neg * b
        perm = rng.permutation(len(self._pid_of))
        pos_anchors = np.resize(perm[self._capable[perm]], n_pos)
        free = np.ones(len(perm), dtype=bool)
        free[pos_anchors] = False
        neg_anchors = perm[free[perm]][:n_neg]

        u = rng.random((n_pos + n_neg, 2))
        pos = [(a, self._positive_partner(a, x)) for a, (x, _) in zip(pos_anchors, u[:n_pos])]
        neg = [(a, self._negative_partner(a, x, y)) for a, (x, y) in zip(neg_anchors, u[n_pos:])]
        pairs = np.concatenate([
            np.array(pos, dtype=np.int64).reshape(b, self.num_pos, 2),
            np.array(neg, dtype=np.int64).reshape(b, self.num_neg, 2)
        ], axis=1)
        order = rng.permuted(np.tile(np.arange(m), (b, 1)), axis=1)
        pairs = np.take_along_axis(pairs, order[:, :, None], axis=1)
        return iter(pairs.reshape(-1).tolist())

    def __len__(self):
        return self.num_batches * self.batch_size


def pair_labels(pids):
    """Is-positive flag of each adjacent pair ``(pids[2i], pids[2i + 1])`` of a batch.

    Returns a bool tensor for a tensor input, else a bool numpy array.
    """
    if len(pids) % 2:
        raise ValueError('pair_labels needs an even number of pids, got {}'.format(len(pids)))
    if not isinstance(pids, torch.Tensor):
        pids = np.asarray(pids)
    return pids[0::2] == pids[1::2]
