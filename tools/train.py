"""Train and evaluate any registered model: upstream torchreid's ``scripts/main.py`` CLI.

Examples::

    python tools/train.py --config-file configs/baselines/resnet50_synthreid.yaml
    python tools/train.py --config-file configs/baselines/resnet50_softmax_market1501.yaml \\
        --root /data/reid model.pretrained False
    python tools/train.py --config-file CFG test.evaluate True model.load_weights log/model/model.pth.tar-60
    python tools/train.py --config-file CFG --resume auto        # after Ctrl-C, a crash or a preemption
    torchrun --nproc_per_node=4 tools/train.py --config-file CFG  # data parallel, 4 processes

Exit status: 0 when done; 128 + the signal number after SIGINT/SIGTERM (a
checkpoint was saved first); 1 on a config, data or non-finite-loss error.
"""
import argparse
import os
import os.path as osp
import sys
import time

import plugins  # first: it silences the host's false import-time warning (plugins.host.silenced)
from torchreid.reid.utils import Logger, collect_env_info, set_random_seed
from plugins import distributed
from plugins.config import engine_run_kwargs
from plugins.data.images import ImageReadError, original_message
from plugins.cli import add_config_arguments, config_or_exit
from plugins.training.launch import build_run, setup_process
from plugins.training.resilience import NonFiniteLossError, TrainingInterrupted


def parse_args(argv=None):
    parser = argparse.ArgumentParser(formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('-s', '--sources', type=str, nargs='+',
                        help='source datasets (delimited by space)')
    parser.add_argument('-t', '--targets', type=str, nargs='+',
                        help='target datasets (delimited by space)')
    parser.add_argument('--transforms', type=str, nargs='+', help='data augmentation')
    parser.add_argument('--resume', type=str, default='',
                        help='checkpoint to resume from, or "auto": the newest complete one in '
                             'data.save_dir (same as model.resume)')
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    if '--resume' in args.opts:  # also accepted after the KEY VALUE overrides
        i = args.opts.index('--resume')
        if i + 1 >= len(args.opts):
            parser.error('--resume needs a checkpoint path or "auto"')
        args.resume = args.opts[i + 1]
        del args.opts[i:i + 2]
    return args


def main(argv=None):
    args = parse_args(argv)
    opts = list(args.opts or []) + (['model.resume', args.resume] if args.resume else [])
    cfg = config_or_exit(args, opts, sources=args.sources, targets=args.targets,
                         transforms=args.transforms)
    set_random_seed(cfg.train.seed)

    try:
        is_main = setup_process(cfg)
    except ValueError as err:
        sys.exit('Config error: {}'.format(err))
    if is_main:
        log_name = 'test.log' if cfg.test.evaluate else 'train.log'
        log_name += time.strftime('-%Y-%m-%d-%H-%M-%S')
        sys.stdout = Logger(osp.join(cfg.data.save_dir, log_name))
    else:  # only rank 0 logs
        sys.stdout = open(os.devnull, 'w')
    print('Show configuration\n{}\n'.format(cfg))
    print('Collecting env info ...')
    print('** System info **\n{}\n'.format(collect_env_info()))
    print('Plugin projects: {}'.format(sorted(plugins.load_projects()) or 'none installed'))
    print('Evaluation: plugins.evaluation.protocol.evaluate_rank (vectorised; replaces the host\'s ranking)')
    if distributed.is_distributed():
        print('Distributed: {} processes, global batch {}'.format(
            distributed.get_world_size(), cfg.train.batch_size))

    try:
        try:
            engine = build_run(cfg)
        except (FileNotFoundError, ValueError) as err:  # dataset folder, weights, checkpoint
            sys.exit('Error: {}'.format(err))
        print('Building {} engine for {}-reid'.format(cfg.engine.name or cfg.loss.name,
                                                      cfg.data.type))
        engine.run(**engine_run_kwargs(cfg))
    except TrainingInterrupted as stop:
        print(stop, flush=True)
        sys.exit(128 + stop.signum)
    except ImageReadError as err:
        sys.exit('Error: {}'.format(original_message(err)))
    except NonFiniteLossError as err:
        sys.exit('Error: {}'.format(err))
    finally:
        distributed.shutdown()


if __name__ == '__main__':
    main()
