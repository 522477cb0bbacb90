"""Compare a method with its official code: map the official weights onto ours, report differences.

Usage::

    git clone https://github.com/microsoft/Relation-Aware-Global-Attention-Networks rga-official
    python tools/check_official.py --method rga --official-dir rga-official
    python tools/check_official.py --method dgnet --official-dir DG-Net --iterations 0 30001 40000
    # time one training iteration of each side by side (GPU when present)
    python tools/check_official.py --method dgnet --official-dir DG-Net --time --threads 2

The official code is imported from ``--official-dir`` (your clone; nothing of it is
copied into this repository), patched at run time only where it cannot run on a CPU
offline; the report lists every patch. Each check prints Markdown tables of the
largest absolute differences (and the largest official values, their scale) and
exits non-zero when a relative difference exceeds ``--tolerance``. With ``--time`` it
instead times the official training iteration and ours from the same state and batch,
in alternating rounds, with each side's peak memory. Methods come from the projects
(``plugins.registry.OFFICIAL_CHECKS``).
"""
import argparse
import sys

import torch

import plugins  # noqa: F401  (loads the projects, which register their checks)
from plugins.host.allocator import keep_freed_host_memory
from plugins.benchmarking.official import check_clone, official_code
from plugins.registry import OFFICIAL_CHECKS


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--method', required=True, choices=OFFICIAL_CHECKS.names())
    parser.add_argument('--official-dir', required=True, help='your clone of the official repository')
    parser.add_argument('--iterations', type=int, nargs='+', default=None,
                        help='dgnet: the training iterations at which one full iteration is compared '
                        '(default 0 30001 30002 40000; with --time 0 40000)')
    parser.add_argument('--time', action='store_true',
                        help='time the official iteration and ours side by side instead of comparing')
    parser.add_argument('--rounds', type=int, default=5, help='--time: alternating timed rounds')
    parser.add_argument('--batch', type=int, nargs='+', default=None,
                        help='--time: images per official loader batch (dgnet default: 2, a CPU '
                        'size, and 8, the official)')
    parser.add_argument('--threads', type=int, default=0, help='torch threads (0: leave as is)')
    parser.add_argument('--tolerance', type=float, default=1e-6,
                        help='largest accepted difference / max(|official value|, 1)')
    parser.add_argument('--out', default='', help='also write the Markdown report to this file')
    args = parser.parse_args(argv)
    if args.time and OFFICIAL_CHECKS.get(args.method).time is None:
        parser.error('--time: method {!r} has no timing; methods with one: {}'.format(
            args.method, ', '.join(n for n in OFFICIAL_CHECKS.names() if OFFICIAL_CHECKS.get(n).time)))
    if args.rounds < 1 or any(b < 1 for b in args.batch or ()):
        parser.error('--rounds and --batch must be at least 1')
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        root = check_clone(args.official_dir, args.method)
    except ValueError as err:
        sys.exit('check_official: {}'.format(err))
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.time:
        keep_freed_host_memory()  # the host allocator of tools/train.py, for both sides alike
    check = OFFICIAL_CHECKS.get(args.method)
    device = 'cuda' if args.time and torch.cuda.is_available() else 'cpu'
    with official_code(root, device) as code:
        report = (check.time if args.time else check.run)(code, args)
        patches = list(code.patches)
    heading = 'Run-time patches in force (applied whether or not this code base needs each):'
    text = '\n'.join([report.markdown(), '', heading, ''] +
                     ['- {}'.format(p) for p in patches]) + '\n'
    print(text)
    if args.out:
        with open(args.out, 'w') as f:
            f.write(text)
    if args.time:
        return
    worst = report.worst()
    if worst > args.tolerance:
        sys.exit('check_official: largest relative difference {:.2e} exceeds --tolerance {:.0e}'.format(
            worst, args.tolerance))
    print('largest relative difference {:.2e} (tolerance {:.0e})'.format(worst, args.tolerance))


if __name__ == '__main__':
    main()
