"""Fast, numpy-2-safe drop-ins for torchreid's rank evaluation.

torchreid 0.2.5 falls back to a per-query Python loop when its Cython extension
is missing (over a minute on Market-1501), and its CUHK03 metric uses ``np.bool``,
which numpy 1.24-1.26 lack (numpy 2 re-added it as an alias of ``np.bool_``).
This module computes the same numbers with a vectorised pass over query
chunks, and adds mINP (Ye et al., TPAMI'21) from the same pass.
"""
import json
import os
import time

import numpy as np
import torch
from torchreid.reid.utils import feature_extractor as host_extractor

from plugins.evaluation import rerank as rerank_module

# Rows per chunk are chosen so one chunk holds about this many (query, gallery)
# cells: a few 8-byte arrays of this size stay around 100 MB at Market scale.
_CHUNK_CELLS = 1 << 22
_CUHK03_REPEATS = 10


_HOST_DISTANCE = rerank_module.HOST_DISTANCE

def compute_distance_matrix(input1, input2, metric='euclidean', device=None, chunk_rows=4096):
    """The host's ``compute_distance_matrix``, run on ``device`` (the engine passes its own;
    None, as the host's callers leave it: the GPU if present). On a CPU it is the host's.

    Query rows go in chunks of ``chunk_rows`` against the whole gallery (MSMT17's
    11,659 x 82,161 matrix never sits on the GPU at once) and come back as the CPU
    tensor the host's evaluation expects. Ranking stays in numpy
    (:func:`evaluate_rank`), whose argsort orders ties as the host's does.
    """
    if device is None:
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    if torch.device(device).type == 'cpu':
        return _HOST_DISTANCE(input1, input2, metric)
    gallery = input2.to(device, non_blocking=True)
    return torch.cat([_HOST_DISTANCE(rows.to(device, non_blocking=True), gallery, metric).cpu()
                      for rows in input1.split(chunk_rows)])


compute_distance_matrix.host_function = _HOST_DISTANCE


def evaluate_rank(
    distmat,
    q_pids,
    g_pids,
    q_camids,
    g_camids,
    max_rank=50,
    use_metric_cuhk03=False,
    use_cython=True,
):
    """Same contract as ``torchreid.reid.metrics.evaluate_rank``: returns ``(cmc, mAP)``.

    ``use_cython`` is accepted for compatibility and ignored; this is already fast.
    """
    if use_metric_cuhk03:
        return eval_cuhk03(distmat, q_pids, g_pids, q_camids, g_camids, max_rank)
    stats = _rank_stats(distmat, q_pids, g_pids, q_camids, g_camids, max_rank)
    return stats['cmc'], stats['mAP']


def evaluate_rank_full(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50):
    """Market-1501 protocol metrics as a dict with ``cmc``, ``mAP`` and ``mINP``.

    mINP is the mean over valid queries of ``num_rel / rank of the last correct
    match`` (1-based, after removing same-pid same-camera gallery entries).
    """
    stats = _rank_stats(distmat, q_pids, g_pids, q_camids, g_camids, max_rank)
    return {'cmc': stats['cmc'], 'mAP': stats['mAP'], 'mINP': stats['mINP']}


def eval_cuhk03(distmat, q_pids, g_pids, q_camids, g_camids, max_rank):
    """CUHK03 single-gallery-shot metric, equal to the host's ``eval_cuhk03``.

    For every valid query and each of 10 repeats, one kept gallery image per
    identity is sampled and the CMC is taken over those. The samples come from
    the global ``np.random`` state in the host's order (query, repeat, identity
    in order of first appearance in the ranking), so seeding before either
    implementation gives the same result. mAP does not depend on sampling.
    """
    distmat, q_pids, g_pids, q_camids, g_camids, max_rank = _check_inputs(
        distmat, q_pids, g_pids, q_camids, g_camids, max_rank
    )
    stats = _rank_stats(distmat, q_pids, g_pids, q_camids, g_camids, max_rank)
    query_cmcs = []
    for q in np.flatnonzero(stats['valid']):
        order = np.argsort(distmat[q])
        junk = (g_pids[order] == q_pids[q]) & (g_camids[order] == q_camids[q])
        kept_pids = g_pids[order[~junk]]
        # Group kept ranks by identity, identities in order of first appearance
        # (the host iterates a dict filled while walking the ranking).
        _, first_rank, group = np.unique(kept_pids, return_index=True, return_inverse=True)
        appearance = np.argsort(np.argsort(first_rank))
        group = appearance[group]
        ranks_by_group = np.argsort(group, kind='stable')
        sizes = np.bincount(group)
        starts = np.cumsum(sizes) - sizes
        # One draw per (repeat, identity), in C order: as the host's nested loops.
        picks = np.random.randint(0, sizes, size=(_CUHK03_REPEATS, sizes.size))
        sampled = ranks_by_group[starts + picks]
        match = sampled[:, group[np.flatnonzero(kept_pids == q_pids[q])[0]]]
        first_hit = (sampled < match[:, None]).sum(axis=1) + 1
        length = min(max_rank, sizes.size)
        hits_at = np.arange(1, length + 1)[None, :] >= first_hit[:, None]
        query_cmcs.append(hits_at.sum(axis=0).astype(np.float32) / _CUHK03_REPEATS)
    cmc = _stack_truncated(query_cmcs).sum(axis=0) / float(len(query_cmcs))
    return cmc, stats['mAP']


def patch_host_cuhk03_metric():
    """Route torchreid's Python CUHK03 metric to :func:`eval_cuhk03` (idempotent).

    Fixes the ``np.bool`` crash on numpy versions without that alias and makes
    the metric fast; results are unchanged for the same ``np.random`` state.

    ``torchreid.reid.metrics.rank.evaluate_py`` looks ``eval_cuhk03`` up in its
    module at call time, so replacing that attribute fixes ``evaluate_rank``.
    """
    from torchreid.reid.metrics import rank

    rank.eval_cuhk03 = eval_cuhk03


def _check_inputs(distmat, q_pids, g_pids, q_camids, g_camids, max_rank):
    distmat = np.asarray(distmat)
    q_pids, g_pids, q_camids, g_camids = (
        np.asarray(a).ravel() for a in (q_pids, g_pids, q_camids, g_camids)
    )
    num_q, num_g = distmat.shape
    if q_pids.size != num_q or q_camids.size != num_q:
        raise ValueError('distmat has {} rows but got {} query pids and {} query camids'.format(
            num_q, q_pids.size, q_camids.size))
    if g_pids.size != num_g or g_camids.size != num_g:
        raise ValueError('distmat has {} columns but got {} gallery pids and {} gallery camids'.format(
            num_g, g_pids.size, g_camids.size))
    if num_g < max_rank:
        max_rank = num_g
        print('Note: number of gallery samples is quite small, got {}'.format(num_g))
    return distmat, q_pids, g_pids, q_camids, g_camids, max_rank


def _rank_stats(distmat, q_pids, g_pids, q_camids, g_camids, max_rank):
    """The shared vectorised pass: per-query hit positions -> CMC, mAP, mINP.

    Gallery entries with the query's pid and camid are "junk": they are dropped
    from the ranking, so a hit's rank is its 1-based position among kept entries.
    Queries without any kept hit are invalid and skipped, as in the host.
    """
    distmat, q_pids, g_pids, q_camids, g_camids, max_rank = _check_inputs(
        distmat, q_pids, g_pids, q_camids, g_camids, max_rank
    )
    num_q, num_g = distmat.shape
    chunk = max(1, _CHUNK_CELLS // max(num_g, 1))
    valid, first_hit, ap, inp, kept_len = [], [], [], [], []
    for start in range(0, num_q, chunk):
        rows = slice(start, start + chunk)
        # Same per-row argsort as the host, so tied distances rank identically.
        order = np.argsort(distmat[rows], axis=1)
        same_pid = g_pids[order] == q_pids[rows, None]
        junk = same_pid & (g_camids[order] == q_camids[rows, None])
        kept_rank = np.cumsum(~junk, axis=1, dtype=np.int64)
        hit_q, hit_col = np.nonzero(same_pid & ~junk)  # row-major: hits of a query are contiguous and ordered
        rank = kept_rank[hit_q, hit_col]
        num_rel = np.bincount(hit_q, minlength=kept_rank.shape[0])
        first = np.cumsum(num_rel) - num_rel  # index of each query's first hit in the flat hit arrays
        nth_hit = np.arange(rank.size) - first[hit_q] + 1
        precision_sum = np.bincount(hit_q, weights=nth_hit / rank, minlength=num_rel.size)
        ok = num_rel > 0
        valid.append(ok)
        first_hit.append(rank[first[ok]])
        ap.append(precision_sum[ok] / num_rel[ok])
        inp.append(num_rel[ok] / rank[first[ok] + num_rel[ok] - 1])
        kept_len.append(kept_rank[ok, -1])
    first_hit, kept_len = np.concatenate(first_hit), np.concatenate(kept_len)
    num_valid = first_hit.size
    assert num_valid > 0, 'Error: all query identities do not appear in gallery'

    # The host truncates each query's curve to its kept gallery size; when that
    # is below max_rank its curves only stack if all are equally short.
    length = min(max_rank, int(kept_len.min()))
    found_by = np.bincount(np.minimum(first_hit, length + 1), minlength=length + 2)[1:length + 1]
    cmc = np.cumsum(found_by).astype(np.float32) / float(num_valid)
    return {
        'valid': np.concatenate(valid),
        'cmc': cmc,
        'mAP': np.mean(np.concatenate(ap)),
        'mINP': np.mean(np.concatenate(inp)),
    }


def _stack_truncated(curves):
    """Stack per-query curves cut to the shortest, as the host's curves are when they stack."""
    length = min(c.size for c in curves)
    return np.asarray([c[:length] for c in curves], dtype=np.float32)


def flip_averaged(extract, images, merge=None):
    """``test.flip``: the retrieval feature of ``images`` from their own and their horizontal
    mirrors' features (``extract(images)`` -> (N, D)).

    By default the mean: it keeps Euclidean distances on the scale of single-pass features
    (after L2 normalisation the mean and the sum rank alike). A model whose method defines
    another combination gives it as ``merge(features, mirrored)``: see :func:`flip_merge_of`.
    """
    features, mirrored = extract(images), extract(images.flip(-1))
    return merge(features, mirrored) if merge is not None else (features + mirrored) / 2


def flip_merge_of(model):
    """The model's ``merge_flipped_features(features, mirrored)``, if it defines one (DG-Net
    re-normalises each half of its feature, as its official evaluation does), else None."""
    model = getattr(model, 'module', model)  # DistributedDataParallel
    return getattr(model, 'merge_flipped_features', None)


class FlipAveraged(torch.nn.Module):
    """A feature model whose output is :func:`flip_averaged` over its input's mirror."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, images):
        return flip_averaged(self.model, images, flip_merge_of(self.model))


class FeatureExtractor(host_extractor.FeatureExtractor):
    """torchreid's ``FeatureExtractor`` (same arguments) with ``flip``: each feature is the mean
    of the image's and its mirror's, as ``test.flip`` evaluates."""

    def __init__(self, *args, flip=False, **kwargs):
        super().__init__(*args, **kwargs)
        if flip:
            self.model = FlipAveraged(self.model)


def average_query_expansion(query, gallery, k=5, alpha=3.0, chunk_rows=4096):
    """``test.aqe``: alpha-weighted query expansion (Radenovic et al., TPAMI'19), on query and
    gallery features alike, as fast-reid applies it.

    Each L2-normalised feature f is replaced by ``normalize(sum_j s_j^alpha f_j)`` over its
    ``k`` most cosine-similar features among query + gallery, itself included (s_j the
    similarity). Rows go in chunks of ``chunk_rows``, so the full similarity matrix is never
    held. Returns the expanded (query, gallery).
    """
    if k < 1 or alpha < 0:
        raise ValueError('test.aqe_k must be at least 1 and test.aqe_alpha at least 0; got {} and {}'
                         .format(k, alpha))
    features = torch.nn.functional.normalize(torch.cat([query, gallery]).float(), dim=1)
    expanded = []
    for rows in features.split(chunk_rows):
        sims, index = (rows @ features.T).topk(min(k, len(features)), dim=1)
        weights = sims.clamp(min=0) ** alpha
        expanded.append((weights[:, :, None] * features[index]).sum(1))
    expanded = torch.nn.functional.normalize(torch.cat(expanded), dim=1)
    return expanded[:len(query)], expanded[len(query):]


# Each ``test.*`` option the evaluation reads: (accepted values in words, check).
OPTION_CHECKS = {
    'dist_metric': ("'euclidean' or 'cosine'", lambda v: v in ('euclidean', 'cosine')),
    'ranks': ('a list of ranks from 1 to 50', lambda v: len(v) > 0 and all(
        isinstance(r, int) and 1 <= r <= 50 for r in v)),
    'aqe_k': ('an integer >= 1', lambda v: isinstance(v, int) and v >= 1),
    'aqe_alpha': ('a number >= 0', lambda v: v >= 0),
    'rerank_k1': ('an integer >= 1', lambda v: isinstance(v, int) and v >= 1),
    'rerank_k2': ('an integer from 1 to test.rerank_k1 + 1', lambda v: isinstance(v, int) and v >= 1),
    'rerank_lambda': ('a number from 0 to 1', lambda v: 0 <= v <= 1),
    'rerank_chunk': ('an integer >= 0 (0: automatic)', lambda v: isinstance(v, int) and v >= 0),
}


def check_options(**options):
    """Raise ``ValueError`` naming the ``test.*`` key and what it accepts for a bad value."""
    for key, value in options.items():
        accepted, check = OPTION_CHECKS[key]
        if not check(value):
            raise ValueError('test.{} {!r} is not accepted: use {}'.format(key, value, accepted))
    if options.get('rerank_k2', 1) > options.get('rerank_k1', 20) + 1:
        raise ValueError('test.rerank_k2 {} is not accepted: use an integer from 1 to '
                         'test.rerank_k1 + 1 ({})'.format(options['rerank_k2'],
                                                          options.get('rerank_k1', 20) + 1))


def distances(query, gallery, dist_metric='euclidean', normalize_feature=False, rerank=False,
              rerank_k1=20, rerank_k2=6, rerank_lambda=0.3, rerank_chunk=0, aqe=False, aqe_k=5,
              aqe_alpha=3.0, device='cpu'):
    """The query x gallery distance matrix (numpy) of the engine's evaluation: optional L2
    normalisation, query expansion (:func:`average_query_expansion`, on normalised
    features), the metric, then k-reciprocal re-ranking (:func:`plugins.evaluation.rerank.re_ranking`,
    equal to the host's, in chunks of ``rerank_chunk`` rows, 0 for automatic) on ``device``."""
    if normalize_feature:
        query, gallery = (torch.nn.functional.normalize(x, dim=1) for x in (query, gallery))
    if aqe:
        query, gallery = average_query_expansion(query, gallery, aqe_k, aqe_alpha)
    if rerank:
        return rerank_module.re_ranking(query, gallery, dist_metric, rerank_k1, rerank_k2,
                                        rerank_lambda, device, rerank_chunk or None).numpy()
    return compute_distance_matrix(query, gallery, dist_metric, device).numpy()


def rank_metrics(distmat, query, gallery, use_metric_cuhk03=False):
    """``{'cmc', 'mAP'[, 'mINP']}`` for ``query``/``gallery`` = (features, pids, camids)."""
    args = (distmat, query[1], gallery[1], query[2], gallery[2])
    if use_metric_cuhk03:
        cmc, mAP = eval_cuhk03(*args, max_rank=50)
        return {'cmc': cmc, 'mAP': float(mAP)}
    result = evaluate_rank_full(*args)
    return {'cmc': result['cmc'], 'mAP': float(result['mAP']), 'mINP': float(result['mINP'])}


def append_metrics(save_dir, record):
    """Append ``record`` as one JSON line to ``<save_dir>/metrics.jsonl`` (with a timestamp)."""
    os.makedirs(save_dir, exist_ok=True)
    with open(os.path.join(save_dir, 'metrics.jsonl'), 'a') as f:
        f.write(json.dumps({'time': time.time(), **record}) + '\n')


def read_metrics(save_dir, kind=None):
    """The records of ``<save_dir>/metrics.jsonl`` (those of ``kind`` 'train' or 'test')."""
    with open(os.path.join(save_dir, 'metrics.jsonl')) as f:
        records = [json.loads(line) for line in f if line.strip()]
    return [r for r in records if kind is None or r['kind'] == kind]
