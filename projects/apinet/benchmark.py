"""Benchmark section ``apinet`` (``python tools/benchmark.py --sections apinet``).

1. **Pair construction** at batch 64 and 256, 2048-d features (ResNet-50's),
   PK layout with 4 images per identity: :func:`~projects.apinet.losses.mine_pairs`
   (vectorised) against :func:`~projects.apinet.losses.reference_pairs_loop` (the
   per-image Python loop, the tests' oracle), with an identical-pairs check.
   Both compute the same distance matrix first; the selection alone (given that
   matrix) is timed too, since on a CPU the matrix product is a large share of
   the vectorised path.
2. **Train step** (forward, losses, backward, SGD step) on one fixed PK batch
   at a small CPU size: torchreid's ``resnet50`` with the ``triplet`` engine
   against ``apinet_resnet50`` with the ``apinet`` engine, at last stride 2 (same
   trunk as torchreid's: isolates the API module's cost) and at last stride 1
   (the registered default).

Times are medians of :func:`plugins.median_time`.
"""
import torch

import plugins
from plugins import median_time, pk_batch, step_engine

from .losses import (mine_pairs, pairwise_sq_distances, reference_pairs_loop,
                     reference_select_loop, select_pairs)

PAIR_BATCHES = (64, 256)
FEATURE_DIM = 2048
NUM_INSTANCES = 4
STEP_BATCH, STEP_HEIGHT, STEP_WIDTH, STEP_CLASSES = 32, 128, 64, 751
STEP_RUNS = (  # (label, model name, builder extras, engine)
    ('resnet50 (torchreid, last stride 2)', 'resnet50', {}, 'triplet'),
    ('apinet_resnet50, last stride 2', 'apinet_resnet50', {'last_stride': 2}, 'apinet'),
    ('apinet_resnet50, last stride 1 (default)', 'apinet_resnet50', {}, 'apinet'),
)


def same_pairs(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


def bench_pairs(batch_size, seed=0, dim=FEATURE_DIM, num_instances=NUM_INSTANCES):
    """Vectorised pair mining against the loop reference on one random PK batch."""
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(batch_size, dim, generator=g)
    pids = torch.arange(batch_size) // num_instances
    dist = pairwise_sq_distances(features)
    steps = 20 if batch_size <= 64 else 10
    result = {
        'batch': batch_size,
        'identical': same_pairs(mine_pairs(features, pids), reference_pairs_loop(features, pids)),
        'ours_ms': 1e3 * median_time(lambda: mine_pairs(features, pids), steps=steps),
        'loop_ms': 1e3 * median_time(lambda: reference_pairs_loop(features, pids), steps=steps),
        'distances_ms': 1e3 * median_time(lambda: pairwise_sq_distances(features), steps=steps),
        'select_ours_ms': 1e3 * median_time(lambda: select_pairs(dist, pids), steps=steps),
        'select_loop_ms': 1e3 * median_time(lambda: reference_select_loop(dist, pids), steps=steps),
    }
    result['speedup'] = result['loop_ms'] / result['ours_ms']
    result['select_speedup'] = result['select_loop_ms'] / result['select_ours_ms']
    return result


def bench_train_step(model_name, extras, engine_name, steps=5, seed=0):
    """Median time of one ``forward_backward`` on a fixed PK batch (CPU)."""
    torch.manual_seed(seed)
    model = plugins.build_model(model_name, STEP_CLASSES, loss='triplet', pretrained=False,
                                use_gpu=False, **extras)
    engine = step_engine(model, STEP_CLASSES, engine_name)
    batch = pk_batch(STEP_BATCH, STEP_HEIGHT, STEP_WIDTH, STEP_CLASSES, engine.device, NUM_INSTANCES)
    engine.set_model_mode('train')
    return median_time(lambda: engine.forward_backward(batch), steps=steps, warmup=1)


def run(args, previous, save):
    """Section entry point: ``run(args, previous, save) -> dict`` (resumes a partial result)."""
    seed = getattr(args, 'seed', 0)
    result = dict(previous or {})
    result['torch_threads'] = torch.get_num_threads()
    if 'pairs' not in result:
        result['pairs'] = {'dim': FEATURE_DIM, 'num_instances': NUM_INSTANCES,
                           'runs': [bench_pairs(b, seed=seed) for b in PAIR_BATCHES]}
        save(result)
    step = result.setdefault('train_step', {
        'batch': STEP_BATCH, 'height': STEP_HEIGHT, 'width': STEP_WIDTH,
        'num_classes': STEP_CLASSES, 'runs': {}})
    for label, model_name, extras, engine_name in STEP_RUNS:
        if label not in step['runs']:
            step['runs'][label] = {'model': model_name, 'engine': engine_name,
                                   'step_s': bench_train_step(model_name, extras, engine_name,
                                                              seed=seed)}
            save(result)
    base = step['runs'][STEP_RUNS[0][0]]['step_s']
    for run_ in step['runs'].values():
        run_['ratio'] = run_['step_s'] / base
    return result


def markdown(result):
    """Markdown tables of a (possibly partial) result."""
    lines = ['## apinet: pair construction and train step']
    pairs = result.get('pairs')
    if pairs:
        lines += [
            '',
            'Pair construction: {dim}-d random features, PK batches of {num_instances} images per '
            'identity; ours = `mine_pairs` (distance matrix + masked argmin), loop = '
            '`reference_pairs_loop` (same distance matrix + per-image Python loop); "selection" '
            'times both given the distance matrix. {threads} torch threads.'.format(
                threads=result.get('torch_threads', '?'), **pairs),
            '',
            '| batch | ours (ms) | loop (ms) | speed-up | distances (ms) | selection ours (ms) '
            '| selection loop (ms) | selection speed-up | identical pairs |',
            '|---:|---:|---:|---:|---:|---:|---:|---:|:---:|',
        ]
        for r in pairs['runs']:
            lines.append('| {batch} | {ours_ms:.2f} | {loop_ms:.2f} | {speedup:.1f}x | '
                         '{distances_ms:.2f} | {select_ours_ms:.3f} | {select_loop_ms:.2f} | '
                         '{select_speedup:.1f}x | {ident} |'.format(
                             ident='yes' if r['identical'] else '**NO**', **r))
    step = result.get('train_step')
    if step and step['runs']:
        lines += [
            '',
            'Train step (forward, all loss terms, backward, SGD step) on one fixed PK batch of '
            '{batch} at {height}x{width}, {num_classes} classes, CPU:'.format(**step),
            '',
            '| model | engine | step (s) | vs resnet50 |',
            '|---|---|---:|---:|',
        ]
        for label, r in step['runs'].items():
            ratio = r.get('ratio')
            lines.append('| {} | {} | {:.2f} | {} |'.format(
                label, r['engine'], r['step_s'], 'not run' if ratio is None else
                '{:.2f}x'.format(ratio)))
    return '\n'.join(lines)
