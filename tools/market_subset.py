"""Cut a small real Market-1501 out of the release tarball (for CPU runs and tests).

Example::

    python tools/market_subset.py --tarball market1501.tar.gz --root /tmp/market40
    python tools/train.py --config-file configs/baselines/resnet50_scratch_market1501.yaml --root /tmp/market40
"""
import argparse
import os
import sys

from plugins.data.datasets.market_subset import ENV_VAR, extract_market_subset


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--tarball', default=os.environ.get(ENV_VAR, ''),
                        help='market1501.tar.gz (default: ${})'.format(ENV_VAR))
    parser.add_argument('--root', required=True, help='folder to write market1501/ into')
    parser.add_argument('--train-ids', type=int, default=40)
    parser.add_argument('--test-ids', type=int, default=40)
    parser.add_argument('--distractors', type=int, default=100)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    try:
        root = extract_market_subset(args.tarball, args.root, args.train_ids, args.test_ids,
                                     args.distractors, args.seed)
    except (FileNotFoundError, ValueError) as err:
        sys.exit('Error: {}'.format(err))
    print('Market-1501 subset in "{}": pass it as --root'.format(root))


if __name__ == '__main__':
    main()
