"""Benchmark our models and torchreid's baselines side by side, in one run.

Usage:
    python tools/benchmark.py                                   # every section, defaults below
    python tools/benchmark.py --sections models --configs configs/baselines/resnet50_synthreid.yaml \\
        configs/baselines/osnet_x1_0_synthreid.yaml --epochs 12
    python tools/benchmark.py --sections models --dataset market1501 --root DIR --epochs 10
    python tools/benchmark.py --sections evaluation --quick     # small problem, for smoke tests
    python tools/benchmark.py ... --resume                      # continue a half-finished run

Sections come from ``plugins.registry.BENCHMARKS`` (projects add their own):
``models`` trains every config for the same epochs and reports accuracy and
costs; ``evaluation`` compares torchreid's evaluation with ours at Market-1501
scale. The run writes ``benchmark.json`` (every figure and the environment),
``benchmark.md`` and ``benchmark.png`` (accuracy against cost) to ``--out-dir``,
saving the JSON after every step so ``--resume`` can continue it.
"""
import argparse
import glob
import json
import os
import os.path as osp
import platform
import sys
import time

import numpy as np
import torch

from plugins.benchmarking.sections import MARKET_SIZE  # importing it registers the built-in sections
from plugins.registry import BENCHMARKS  # importing plugins registered the projects' sections
from plugins.host.allocator import keep_freed_host_memory

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
QUICK_SIZE = (300, 1500)
DEFAULT_CONFIGS = sorted(c for c in glob.glob(osp.join(REPO_ROOT, 'configs', '*', '*_synthreid.yaml'))
                         if not osp.basename(c).startswith('_'))  # not the shared bases


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--sections', nargs='+', default=BENCHMARKS.names(),
                        choices=BENCHMARKS.names())
    parser.add_argument('--configs', nargs='+', default=DEFAULT_CONFIGS,
                        help='models section: configs to train (default: every *_synthreid.yaml)')
    parser.add_argument('--epochs', type=int, default=12, help='models section: epochs per config')
    parser.add_argument('--dataset', default='', help='models section: train and test on this '
                        'registered dataset instead of each config\'s own')
    parser.add_argument('--root', default='', help='dataset root (data.root)')
    parser.add_argument('--no-onnx', dest='onnx', action='store_false',
                        help='skip the onnxruntime inference measurement')
    parser.add_argument('--opts', nargs='*', default=[],
                        help='KEY VALUE config overrides applied to every config')
    parser.add_argument('--num-query', type=int, default=None,
                        help='evaluation section (default {}, {} with --quick)'.format(
                            MARKET_SIZE[0], QUICK_SIZE[0]))
    parser.add_argument('--num-gallery', type=int, default=None,
                        help='evaluation section (default {}, {} with --quick)'.format(
                            MARKET_SIZE[1], QUICK_SIZE[1]))
    parser.add_argument('--quick', action='store_true', help='small evaluation problem')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--official-dir', default='',
                        help='dgnet section: your clone of NVlabs/DG-Net, to time its iteration '
                        'beside ours (as tools/check_official.py --time)')
    parser.add_argument('--out-dir', default=osp.join('output', 'benchmark'))
    parser.add_argument('--resume', action='store_true',
                        help='continue from --out-dir/benchmark.json and the run checkpoints')
    args = parser.parse_args(argv)
    size = QUICK_SIZE if args.quick else MARKET_SIZE
    args.num_query = args.num_query or size[0]
    args.num_gallery = args.num_gallery or size[1]
    missing = [c for c in args.configs if not osp.isfile(c)]
    if missing:
        parser.error('config file(s) not found: {}'.format(', '.join(missing)))
    return args


def environment(host_memory_kept):
    return {
        'host_allocator': ('glibc, freed memory kept (plugins.host.allocator.keep_freed_host_memory)'
                           if host_memory_kept else 'default settings'),
        'date': time.strftime('%Y-%m-%d %H:%M:%S'),
        'command': ' '.join([osp.basename(sys.argv[0])] + sys.argv[1:]),
        'python': platform.python_version(),
        'torch': torch.__version__,
        'numpy': np.__version__,
        'device': torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu',
        'torch_threads': torch.get_num_threads(),
        'cpu_count': os.cpu_count(),
        'machine': platform.machine(),
    }


def plot_models(models, path):
    """Rank-1 against training time and against GFLOPs, one labelled point per config."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    runs = {n: r for n, r in models['runs'].items() if r.get('status') == 'done'}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, key, label in ((axes[0], 'train_s', 'training time for the budget (s)'),
                           (axes[1], 'gflops', 'GFLOPs per image')):
        for name, run in runs.items():
            ax.scatter(run[key], 100 * run['rank1'])
            ax.annotate(name, (run[key], 100 * run['rank1']), fontsize=8,
                        xytext=(4, 4), textcoords='offset points')
        ax.set_xlabel(label)
        ax.set_ylabel('Rank-1 (%)')
        ax.grid(alpha=0.3)
    fig.suptitle('Same budget: {} epochs on {}'.format(models['epochs'], models['dataset']))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(report, out_dir):
    with open(osp.join(out_dir, 'benchmark.json.part'), 'w') as f:
        json.dump(report, f, indent=2)
    os.replace(osp.join(out_dir, 'benchmark.json.part'), osp.join(out_dir, 'benchmark.json'))
    env = report['meta']
    header = ('# Benchmark\n\n`{command}`\n\n{date}; torch {torch}, numpy {numpy}, Python {python}, '
              'device {device}, {torch_threads} torch threads, {cpu_count} CPUs; host allocator: '
              '{host_allocator}.\n').format(**env)
    tables = [BENCHMARKS.get(name).markdown(result)
              for name, result in report['sections'].items() if result]
    with open(osp.join(out_dir, 'benchmark.md'), 'w') as f:
        f.write(header + '\n' + '\n\n'.join(tables) + '\n')
    models = report['sections'].get('models')
    if models and any(r.get('status') == 'done' for r in models['runs'].values()):
        plot_models(models, osp.join(out_dir, 'benchmark.png'))


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.out_dir, exist_ok=True)
    json_path = osp.join(args.out_dir, 'benchmark.json')
    report = {'meta': environment(keep_freed_host_memory()), 'sections': {}}
    if args.resume and osp.isfile(json_path):
        with open(json_path) as f:
            report['sections'] = json.load(f)['sections']
        print('Resuming from {}'.format(json_path))

    for name in args.sections:
        def save(partial, name=name):
            report['sections'][name] = partial
            write_outputs(report, args.out_dir)

        result = BENCHMARKS.get(name).run(args, report['sections'].get(name), save)
        save(result)
        print(BENCHMARKS.get(name).markdown(result) + '\n', flush=True)
    print('Wrote {}'.format(', '.join(osp.join(args.out_dir, 'benchmark.' + ext)
                                      for ext in ('json', 'md', 'png'))))
    return report


if __name__ == '__main__':
    main()
