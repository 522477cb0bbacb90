"""Benchmark section ``scal`` (``python tools/benchmark.py --sections scal``).

The SCAL training step (attention forward, no-attention forward, rewards,
ReID terms + critic value, backward, SGD step, critic step) against the same
network trained without the critic (``triplet`` engine: attention forward,
CE + triplet, backward, step), for both agent kinds, on one fixed PK batch.
Target: the SCAL step at most 1.6x the plain one (the no-attention pass is a
gradient-free forward, far cheaper than a second training pass). The two steps
alternate (:func:`plugins.interleaved_times`) and the ratio is the
median of per-round ratios, so load on a shared machine affects both alike.
"""
import torch

import plugins
from plugins import interleaved_times, pk_batch, step_engine

BATCH, HEIGHT, WIDTH, NUM_CLASSES = 16, 256, 128, 751
QUICK = (8, 64, 32)
MODELS = ('scal_channel_resnet50', 'scal_spatial_resnet50')
ENGINES = ('triplet', 'scal')  # without the critic, with it
STEPS = 7


def step_fn(model_name, engine_name, batch_size, height, width):
    """One ``forward_backward`` of a freshly built model on a fixed PK batch (CPU)."""
    torch.manual_seed(0)
    model = plugins.build_model(model_name, NUM_CLASSES, loss='triplet', pretrained=False,
                                use_gpu=False, height=height, width=width)
    engine = step_engine(model, NUM_CLASSES, engine_name)
    batch = pk_batch(batch_size, height, width, NUM_CLASSES, engine.device)
    engine.set_model_mode('train')
    return lambda: engine.forward_backward(batch)


def run(args, previous, save):
    quick = getattr(args, 'quick', False)
    batch_size, height, width = QUICK if quick else (BATCH, HEIGHT, WIDTH)
    result = dict(previous or {'batch': batch_size, 'height': height, 'width': width,
                               'threads': torch.get_num_threads(), 'runs': {}})
    for name in MODELS[:1] if quick else MODELS:
        if name not in result['runs']:
            fns = [step_fn(name, engine, batch_size, height, width) for engine in ENGINES]
            (plain, scal), (_, ratio) = interleaved_times(fns, steps=1 if quick else STEPS)
            result['runs'][name] = {'plain_s': plain, 'scal_s': scal, 'ratio': ratio}
            save(result)
    return result


def markdown(result):
    lines = ['## scal: train step with the critic vs without',
             '',
             'One step on a fixed PK batch of {batch} at {height}x{width}, 751 classes, CPU, '
             '{threads} torch threads. "without critic": the same network and ReID terms '
             '(`triplet` engine); "SCAL": plus the no-attention pass, rewards, -V term and the '
             'critic step (`scal` engine).'.format(**result),
             '',
             '| model | without critic (s) | SCAL (s) | ratio (median of rounds) |', '|---|---:|---:|---:|']
    for name, r in result.get('runs', {}).items():
        lines.append('| {} | {:.2f} | {:.2f} | {:.2f}x |'.format(name, r['plain_s'], r['scal_s'],
                                                                r['ratio']))
    return '\n'.join(lines)
