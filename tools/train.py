"""Train and evaluate any registered model: upstream torchreid's ``scripts/main.py`` CLI.

Examples::

    python tools/train.py --config-file configs/baselines/resnet50_synthreid.yaml
    python tools/train.py --config-file configs/baselines/resnet50_softmax_market1501.yaml \\
        --root /data/reid model.pretrained False
    python tools/train.py --config-file CFG test.evaluate True model.load_weights log/model/model.pth.tar-60
"""
import argparse
import os.path as osp
import sys
import time

import torch
from torchreid.reid.utils import Logger, collect_env_info, set_random_seed

import plugins
from plugins.launch import build_run, setup_config
from plugins.config import engine_run_kwargs


def parse_args(argv=None):
    parser = argparse.ArgumentParser(formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--config-file', type=str, default='', help='path to config file')
    parser.add_argument('-s', '--sources', type=str, nargs='+',
                        help='source datasets (delimited by space)')
    parser.add_argument('-t', '--targets', type=str, nargs='+',
                        help='target datasets (delimited by space)')
    parser.add_argument('--transforms', type=str, nargs='+', help='data augmentation')
    parser.add_argument('--root', type=str, default='', help='path to data root')
    parser.add_argument('opts', default=None, nargs=argparse.REMAINDER,
                        help='Modify config options using the command-line')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        cfg = setup_config(args.config_file, args.opts, root=args.root, sources=args.sources,
                           targets=args.targets, transforms=args.transforms)
    except (KeyError, TypeError, ValueError, FileNotFoundError) as err:
        sys.exit('Config error: {}'.format(err.args[0] if err.args else err))
    set_random_seed(cfg.train.seed)

    log_name = 'test.log' if cfg.test.evaluate else 'train.log'
    log_name += time.strftime('-%Y-%m-%d-%H-%M-%S')
    sys.stdout = Logger(osp.join(cfg.data.save_dir, log_name))
    print('Show configuration\n{}\n'.format(cfg))
    print('Collecting env info ...')
    print('** System info **\n{}\n'.format(collect_env_info()))
    print('Plugin projects: {}'.format(sorted(plugins.load_projects()) or 'none installed'))
    if cfg.use_gpu:
        torch.backends.cudnn.benchmark = True

    try:
        engine = build_run(cfg)
    except FileNotFoundError as err:  # missing dataset folder, weights or checkpoint file
        sys.exit('Error: {}'.format(err))
    print('Building {} engine for {}-reid'.format(cfg.engine.name or cfg.loss.name, cfg.data.type))
    engine.run(**engine_run_kwargs(cfg))


if __name__ == '__main__':
    main()
