"""k-reciprocal re-ranking (Zhong et al., CVPR'17) in row chunks, on the GPU when given one.

The host's ``re_ranking`` builds the whole (query + gallery)^2 distance matrix, its
argsort, the dense encoding V and its query-expanded copy in float32: about 6 such
matrices, over 8 GB at Market-1501 scale and over 25 GB on MSMT17. This computes
the same distances from the features: distance rows are made ``chunk_rows`` at a
time and dropped after their top ranks and weights are read, V is kept sparse
(each row holds a k-reciprocal set of a few dozen entries), and the Jaccard term
is a join over V's non-zeros. Peak memory is then a few chunks plus the sparse V.

Notation follows the paper: d the metric's distance (torchreid's ``euclidean`` is
already squared and is squared again, as in the host), R(p, k) the k-reciprocal
set, R*(p, k) its expansion (Eq. 6), V the Gaussian-weighted encoding (Eq. 7),
local query expansion over the k2 nearest (Eq. 11), Jaccard distance (Eq. 10)
and the final distance ``(1 - lambda) d_J + lambda d`` (Eq. 12).
"""
import warnings

import torch
from torchreid.reid.metrics import distance as host_distance

# The host's distance function, also where ours has been installed in its place.
HOST_DISTANCE = getattr(host_distance.compute_distance_matrix, 'host_function',
                        host_distance.compute_distance_matrix)

# Distance rows per chunk hold about this many cells (float32: 256 MB).
_CHUNK_CELLS = 1 << 26
# Terms of the Jaccard join computed at once (about 40 bytes each).
_JOIN_TERMS = 1 << 23


class RerankMemoryError(MemoryError):
    """Re-ranking would not fit in the memory of its device."""


def re_ranking(query, gallery, metric='euclidean', k1=20, k2=6, lambda_value=0.3,
               device='cpu', chunk_rows=None):
    """Re-ranked query x gallery distances (a float32 CPU tensor) from features.

    Equal (to float32 round-off) to the host's ``re_ranking(d(q, g), d(q, q), d(g, g),
    k1, k2, lambda_value)`` with ``d = compute_distance_matrix(., ., metric)``.
    ``chunk_rows`` (default: about 2^26 cells per chunk) bounds the memory of each pass.
    """
    if k1 < 1 or not 1 <= k2 <= k1 + 1 or not 0 <= lambda_value <= 1:
        raise ValueError('re-ranking needs k1 >= 1, 1 <= k2 <= k1 + 1 and 0 <= lambda <= 1 '
                         '(test.rerank_k1, test.rerank_k2, test.rerank_lambda); got k1={}, '
                         'k2={}, lambda={}'.format(k1, k2, lambda_value))
    device = torch.device(device)
    features = torch.cat([query, gallery]).float().to(device)
    num_query, total = len(query), len(features)
    if chunk_rows is None:
        chunk_rows = max(1, _CHUNK_CELLS // total)
    _check_memory(total, chunk_rows, device)
    try:
        width = min(k1 + 1, total)
        ranks, row_max = _initial_ranks(features, metric, width, chunk_rows)
        encoding = _encoding(features, metric, ranks, row_max, k1, chunk_rows)
        if k2 != 1:
            encoding = _local_query_expansion(encoding, ranks[:, :k2])
        jaccard = _jaccard(encoding, num_query, chunk_rows)
        original = torch.cat([
            _distances_squared(rows, features[num_query:], metric) / row_max[start:start + len(rows), None]
            for start, rows in _chunks(features[:num_query], chunk_rows)])
    except torch.cuda.OutOfMemoryError as error:
        raise RerankMemoryError(_advice(total, chunk_rows, device)) from error
    return (jaccard * (1 - lambda_value) + original * lambda_value).cpu()


def _chunks(rows, chunk_rows):
    for start in range(0, len(rows), chunk_rows):
        yield start, rows[start:start + chunk_rows]


def _distances_squared(rows, features, metric):
    """The host squares the metric's matrix before re-ranking; so do we."""
    return HOST_DISTANCE(rows, features, metric) ** 2


def _initial_ranks(features, metric, width, chunk_rows):
    """Each row's ``width`` nearest (itself first) and its largest squared distance.

    The host divides row p of the squared distances by its maximum (the column's,
    which equals it for the symmetric matrix of one feature set)."""
    ranks, row_max = [], []
    for _, rows in _chunks(features, chunk_rows):
        squared = _distances_squared(rows, features, metric)
        row_max.append(squared.max(dim=1).values)
        ranks.append(squared.topk(width, dim=1, largest=False).indices)
    return torch.cat(ranks), torch.cat(row_max)


def _reciprocal(ranks, k):
    """Mask over ``ranks[:, :k + 1]``: which of p's k nearest hold p among their own k nearest."""
    forward = ranks[:, :k + 1]
    own = torch.arange(len(ranks), device=ranks.device)[:, None, None]
    return (ranks[forward, :k + 1] == own).any(dim=-1)


def _encoding(features, metric, ranks, row_max, k1, chunk_rows):
    """The sparse V of Eq. 7 over R*(p, k1) of Eq. 6, as a (N, N) sparse CSR tensor."""
    total, width = ranks.shape
    half = round(k1 / 2)  # the host's np.around: ties to even
    reciprocal = _reciprocal(ranks, k1)
    half_width = min(half + 1, width)
    half_ranks = ranks[:, :half_width]
    half_reciprocal = _reciprocal(ranks, half)
    rows_out, cols_out, values_out = [], [], []
    for start, rows in _chunks(features, chunk_rows):
        stop = start + len(rows)
        own = torch.where(reciprocal[start:stop], ranks[start:stop], -1)  # R(p, k1); -1 unused
        candidates = ranks[start:stop]  # each member q of R(p, k1) brings R(q, k1 / 2) ...
        members = half_ranks[candidates]  # (rows, width, half_width)
        valid = half_reciprocal[candidates]
        inside = (members[..., None] == own[:, None, None, :]).any(dim=-1) & valid
        # ... when more than 2/3 of it lies in R(p, k1) (Eq. 6)
        accepted = reciprocal[start:stop] & (inside.sum(-1) > 2.0 / 3 * valid.sum(-1))
        members = torch.where(valid & accepted[..., None], members, -1)
        expansion = torch.cat([own, members.flatten(1)], dim=1)
        expansion = expansion.masked_fill(expansion < 0, total).sort(dim=1).values
        keep = expansion < total
        keep[:, 1:] &= expansion[:, 1:] != expansion[:, :-1]
        squared = _distances_squared(rows, features, metric) / row_max[start:stop, None]
        weights = torch.exp(-squared.gather(1, expansion.clamp(max=total - 1))) * keep
        weights = weights / weights.sum(dim=1, keepdim=True)
        row_index = torch.arange(start, stop, device=features.device)[:, None].expand_as(keep)
        rows_out.append(row_index[keep])
        cols_out.append(expansion[keep])
        values_out.append(weights[keep])
    return _sparse(torch.cat(rows_out), torch.cat(cols_out), torch.cat(values_out), total)


def _sparse(rows, cols, values, total):
    return torch.sparse_coo_tensor(torch.stack([rows, cols]), values, (total, total),
                                   check_invariants=False).coalesce()


def _local_query_expansion(encoding, nearest):
    """Eq. 11: each row of V becomes the mean of the rows of its k2 nearest (itself included)."""
    total, k2 = nearest.shape
    rows = torch.arange(total, device=nearest.device).repeat_interleave(k2)
    mean = _sparse(rows, nearest.flatten(), torch.full((total * k2,), 1.0 / k2,
                                                       device=nearest.device), total)
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', 'Sparse CSR tensor support is in beta')
        return torch.sparse.mm(mean, encoding).coalesce()


def _jaccard(encoding, num_query, chunk_rows):
    """Eq. 10 for query rows against gallery columns: 1 - sum min(V_p, V_g) / sum max(V_p, V_g),
    with sum max = 2 - sum min as every row of V sums to 1.

    sum_k min(V_pk, V_gk) only has terms where both are non-zero: for each non-zero
    (p, k) of a query, the column k's non-zeros (g, k) add min(V_pk, V_gk) to (p, g)."""
    total = encoding.shape[0]
    device = encoding.device
    (rows, cols), values = encoding.indices(), encoding.values()
    by_column = torch.argsort(cols * total + rows)
    column_rows, column_values = rows[by_column], values[by_column]
    column_count = torch.bincount(cols, minlength=total)
    column_start = torch.cumsum(column_count, 0) - column_count
    query_end = int(torch.searchsorted(rows, num_query))  # rows come sorted (coalesced)
    entry_counts = column_count[cols[:query_end]]
    result = []
    for start in range(0, num_query, chunk_rows):
        stop = min(start + chunk_rows, num_query)
        first, last = (int(i) for i in torch.searchsorted(rows[:query_end],
                                                          torch.tensor([start, stop], device=device)))
        shared = torch.zeros(stop - start, total, device=device)
        for piece in _pieces(entry_counts[first:last], _JOIN_TERMS):
            p, k, v = (x[first:last][piece] for x in (rows, cols, values))
            counts = column_count[k]
            offsets = torch.arange(int(counts.sum()), device=device) - \
                torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
            position = torch.repeat_interleave(column_start[k], counts) + offsets
            shared.view(-1).index_add_(
                0, torch.repeat_interleave(p - start, counts) * total + column_rows[position],
                torch.minimum(torch.repeat_interleave(v, counts), column_values[position]))
        shared = shared[:, num_query:]
        result.append(1 - shared / (2 - shared))
    return torch.cat(result)


def _pieces(counts, budget):
    """Slices of consecutive entries whose join terms (``counts``) add up to about ``budget``:
    a hub column (one gallery image in many k-reciprocal sets) makes some entries costly."""
    ends = torch.cumsum(counts, 0)
    start = 0
    while start < len(counts):
        base = int(ends[start - 1]) if start else 0
        stop = max(start + 1, int(torch.searchsorted(ends, base + budget, right=True)))
        yield slice(start, stop)
        start = stop


def _bytes_needed(total, chunk_rows):
    """A bound on the peak: a chunk's distance rows (float32) plus the dense Jaccard rows,
    the ranks, and a sparse V of at most about 250 entries a row before expansion."""
    return 4 * (4 * chunk_rows * total) + 8 * 21 * total + 24 * 250 * total * 2


def _available_bytes(device):
    if device.type == 'cuda':
        return torch.cuda.mem_get_info(device)[0]
    with open('/proc/meminfo') as f:
        info = dict(line.split(':', 1) for line in f)
    return int(info['MemAvailable'].split()[0]) * 1024


def _advice(total, chunk_rows, device):
    return ('re-ranking {} query + gallery images with test.rerank_chunk {} needs about {:.1f} '
            'GB on {}, which does not have it; lower test.rerank_chunk (rows per chunk) or '
            'evaluate without test.rerank'.format(total, chunk_rows,
                                                  _bytes_needed(total, chunk_rows) / 1e9, device))


def _check_memory(total, chunk_rows, device):
    try:
        available = _available_bytes(device)
    except (OSError, KeyError, ValueError):  # no /proc/meminfo: let the run tell
        return
    if _bytes_needed(total, chunk_rows) > available:
        raise RerankMemoryError(_advice(total, chunk_rows, device))
