"""Benchmarks of the plugin suite against the torchreid host, one section each.

Usage:
    python tools/benchmark.py --sections evaluation [--num-query 3368 --num-gallery 15913]
    python tools/benchmark.py --quick            # small problem, for smoke tests

Each section returns a JSON-able dict and renders a Markdown table; the run
writes ``benchmark.json`` and ``benchmark.md`` to ``--out-dir``. Add a section by
writing its two functions and listing it in ``SECTIONS``.
"""
import argparse
import importlib.util
import json
import os
import platform
import sys
import time
import warnings

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

MARKET_SIZE = (3368, 15913)
QUICK_SIZE = (300, 1500)


def make_rank_problem(num_query, num_gallery, seed=0, dim=64, num_cams=6):
    """A Market-1501-like retrieval problem from random features.

    Gallery: ~17.5 images per identity (751 identities at Market scale), 17.5%
    distractors with pid 0, 6 cameras. Features are identity centre + camera
    offset + noise, so rankings are neither trivial nor random and same-camera
    matches (which the protocol removes) are ranked high, as in real data.
    Returns squared euclidean distances (torchreid's default) in float32.
    """
    rng = np.random.RandomState(seed)
    num_distractors = int(round(0.1755 * num_gallery))
    num_labelled = num_gallery - num_distractors
    num_ids = max(2, min(751, int(num_labelled / 17.5)))
    g_pids = np.concatenate([
        np.arange(1, num_ids + 1),  # every identity has gallery images
        rng.randint(1, num_ids + 1, num_labelled - num_ids),
        np.zeros(num_distractors, dtype=np.int64),
    ])
    q_pids = rng.randint(1, num_ids + 1, num_query)
    g_camids = rng.randint(0, num_cams, num_gallery)
    q_camids = rng.randint(0, num_cams, num_query)

    centres = rng.randn(num_ids + 1, dim)
    cam_offsets = 0.6 * rng.randn(num_cams, dim)

    def features(pids, camids):
        f = centres[pids] + cam_offsets[camids] + 0.7 * rng.randn(pids.size, dim)
        distractor = pids == 0
        f[distractor] = 1.2 * rng.randn(int(distractor.sum()), dim)
        return f.astype(np.float32)

    qf, gf = features(q_pids, q_camids), features(g_pids, g_camids)
    distmat = (qf ** 2).sum(1)[:, None] + (gf ** 2).sum(1)[None, :] - 2 * qf @ gf.T
    return distmat, q_pids, g_pids, q_camids, g_camids


def load_pristine_host_rank():
    """A fresh copy of torchreid's ``metrics/rank.py``.

    Importing ``plugins`` routes the host's metric functions to ours, so the
    reference must come from a copy that no fix has touched.
    """
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # the host warns that its Cython metric is missing
        import torchreid.reid.metrics

        path = os.path.join(os.path.dirname(torchreid.reid.metrics.__file__), 'rank.py')
        spec = importlib.util.spec_from_file_location('_pristine_torchreid_rank', path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module


def bench_evaluation(num_query, num_gallery, seed=0, max_rank=50, repeats=3):
    """Host Python ``eval_market1501`` (run once) vs ours (best of ``repeats``)."""
    from plugins.evaluation import evaluate_rank_full

    host_rank = load_pristine_host_rank()
    problem = make_rank_problem(num_query, num_gallery, seed=seed)
    start = time.perf_counter()
    host_cmc, host_map = host_rank.eval_market1501(*problem, max_rank)
    host_s = time.perf_counter() - start

    ours_s = float('inf')
    for _ in range(repeats):
        start = time.perf_counter()
        ours = evaluate_rank_full(*problem, max_rank=max_rank)
        ours_s = min(ours_s, time.perf_counter() - start)

    cmc_diff = float(np.abs(host_cmc - ours['cmc']).max())
    map_diff = float(abs(host_map - ours['mAP']))
    return {
        'num_query': num_query,
        'num_gallery': num_gallery,
        'max_rank': max_rank,
        'host_s': host_s,
        'ours_s': ours_s,
        'ours_repeats': repeats,
        'speedup': host_s / ours_s,
        'max_abs_diff_cmc': cmc_diff,
        'abs_diff_mAP': map_diff,
        'max_abs_diff': max(cmc_diff, map_diff),
        'rank1': float(ours['cmc'][0]),
        'mAP': float(ours['mAP']),
        'mINP': float(ours['mINP']),
    }


def markdown_evaluation(result):
    return '\n'.join([
        '## evaluation: Market-1501 protocol (CMC + mAP)',
        '',
        'Problem: {num_query} x {num_gallery}, max_rank {max_rank}; rank-1 {rank1:.4f}, '
        'mAP {mAP:.4f}, mINP {mINP:.4f}. Host: torchreid Python `eval_market1501` '
        '(run once); ours: `plugins.evaluation`, best of {ours_repeats}.'.format(**result),
        '',
        '| host (s) | ours (s) | speed-up | max abs diff CMC | abs diff mAP |',
        '|---:|---:|---:|---:|---:|',
        '| {host_s:.2f} | {ours_s:.3f} | {speedup:.1f}x | {max_abs_diff_cmc:.3g} | '
        '{abs_diff_mAP:.3g} |'.format(**result),
    ])


# name -> (run(args) -> dict, markdown(dict) -> str)
SECTIONS = {
    'evaluation': (
        lambda args: bench_evaluation(args.num_query, args.num_gallery, seed=args.seed),
        markdown_evaluation,
    ),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--sections', nargs='+', default=sorted(SECTIONS), choices=sorted(SECTIONS))
    parser.add_argument('--num-query', type=int, default=None,
                        help='default {} ({} with --quick)'.format(MARKET_SIZE[0], QUICK_SIZE[0]))
    parser.add_argument('--num-gallery', type=int, default=None,
                        help='default {} ({} with --quick)'.format(MARKET_SIZE[1], QUICK_SIZE[1]))
    parser.add_argument('--quick', action='store_true', help='small problem sizes for smoke tests')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--out-dir', default=os.path.join('output', 'benchmark'))
    args = parser.parse_args(argv)
    size = QUICK_SIZE if args.quick else MARKET_SIZE
    args.num_query = size[0] if args.num_query is None else args.num_query
    args.num_gallery = size[1] if args.num_gallery is None else args.num_gallery
    return args


def main(argv=None):
    args = parse_args(argv)
    report = {
        'meta': {
            'date': time.strftime('%Y-%m-%d %H:%M:%S'),
            'python': platform.python_version(),
            'numpy': np.__version__,
            'machine': platform.machine(),
            'cpu_count': os.cpu_count(),
        },
        'sections': {},
    }
    tables = []
    for name in args.sections:
        run, markdown = SECTIONS[name]
        report['sections'][name] = run(args)
        tables.append(markdown(report['sections'][name]))
        print(tables[-1] + '\n', flush=True)

    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, 'benchmark.json'), 'w') as f:
        json.dump(report, f, indent=2)
    meta = report['meta']
    header = '# Benchmark\n\n{date}; Python {python}, numpy {numpy}, {machine}, {cpu_count} CPUs.\n'.format(**meta)
    with open(os.path.join(args.out_dir, 'benchmark.md'), 'w') as f:
        f.write(header + '\n' + '\n\n'.join(tables) + '\n')
    return report


if __name__ == '__main__':
    main()
