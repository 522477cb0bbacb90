"""Benchmark section ``casn`` (``python tools/benchmark.py --sections casn``).

The CASN training step (identification + identification attention with its
masked-image pass + verification + Siamese attention, second-order Grad-CAM
gradients included) against the same network and batch with only the
identification loss (the backbone baseline), for IDE at 288x144 and PCB at
384x128, 16 pairs (8 positive) per batch, CPU. Target: at most 2.5x.
"""
import torch

import plugins
from plugins import median_time, step_engine

PAIRS, NUM_CLASSES = 16, 751
RUNS = (('casn_ide_resnet50', 288, 144), ('casn_pcb_resnet50', 384, 128))
QUICK = (('casn_ide_resnet50', 64, 32),)
ID_ONLY = ['casn.weight_ia', '0.0', 'casn.weight_ver', '0.0', 'casn.weight_sa', '0.0']
FULL = ['sampler.train_sampler', 'PairwiseSampler']


def pair_batch(pairs, height, width, num_classes, seed=0):
    """``pairs`` adjacent pairs, every other one positive, on random images."""
    g = torch.Generator().manual_seed(seed)
    anchors = torch.arange(pairs) % num_classes
    partners = torch.where(torch.arange(pairs) % 2 == 0, anchors, (anchors + 1) % num_classes)
    pids = torch.stack([anchors, partners], 1).view(-1)
    return {'img': torch.randn(2 * pairs, 3, height, width, generator=g), 'pid': pids,
            'camid': torch.zeros(2 * pairs, dtype=torch.long)}


def bench_step(model_name, height, width, opts, pairs, steps):
    torch.manual_seed(0)
    model = plugins.build_model(model_name, NUM_CLASSES, pretrained=False, use_gpu=False)
    engine = step_engine(model, NUM_CLASSES, 'casn', opts=['loss.name', 'softmax'] + opts)
    batch = pair_batch(pairs, height, width, NUM_CLASSES)
    engine.set_model_mode('train')
    return median_time(lambda: engine.forward_backward(batch), steps=steps, warmup=1)


def run(args, previous, save):
    quick = getattr(args, 'quick', False)
    pairs, steps = (4, 1) if quick else (PAIRS, 3)
    result = dict(previous or {'pairs': pairs, 'threads': torch.get_num_threads(), 'runs': {}})
    for name, height, width in (QUICK if quick else RUNS):
        if name not in result['runs']:
            base = bench_step(name, height, width, ID_ONLY, pairs, steps)
            full = bench_step(name, height, width, FULL, pairs, steps)
            result['runs'][name] = {'height': height, 'width': width, 'id_only_s': base,
                                    'casn_s': full, 'ratio': full / base}
            save(result)
    return result


def markdown(result):
    lines = ['## casn: train step with all four losses vs identification only', '',
             '{pairs} pairs per batch (half positive), CPU, {threads} torch threads; "id only": '
             'the same network and batch with casn.weight_ia/ver/sa = 0.'.format(**result), '',
             '| model | input | id only (s) | CASN (s) | ratio |', '|---|---|---:|---:|---:|']
    for name, r in result.get('runs', {}).items():
        lines.append('| {} | {}x{} | {:.2f} | {:.2f} | {:.2f}x |'.format(
            name, r['height'], r['width'], r['id_only_s'], r['casn_s'], r['ratio']))
    return '\n'.join(lines)
