"""Under ``torch.distributed.run``: build each config's run, take a few training steps on
each rank's shard, and print one checksum line per config, registered network and rank.

Every engine's networks must stay equal on every rank whatever the step does with
them (calls outside ``forward``, several calls per backward, parameters without a
gradient, frozen layers during ``train.fixbase_epoch``, which is applied as at
epoch 0). Usage: ``python -m torch.distributed.run --standalone --nproc_per_node 2
ddp_rank_sync.py CONFIG[,CONFIG...] DATA_ROOT SAVE_DIR [KEY VALUE ...]``; each line
reads ``CHECKSUM <config> <network> <rank 0> <rank 1>``.
"""
import os.path as osp
import sys

import torch

from plugins import distributed
from plugins.training.launch import setup_config, start_run

STEPS = 2


def rank_checksums(config, root, save_dir, opts):
    cfg = setup_config(config, ['use_gpu', 'False', 'data.workers', '0', 'data.save_dir', save_dir,
                                *opts], root=root)
    engine = start_run(cfg, verbose=False)
    engine.max_epoch, engine.epoch = 1, 0
    engine.set_model_mode('train')
    engine.two_stepped_transfer_learning(0, cfg.train.fixbase_epoch, cfg.train.open_layers)
    for step, data in zip(range(STEPS), engine.train_loader):
        engine.forward_backward(data)
    engine.read_step_flags()  # raises if some parameter had a gradient on one rank only
    name = osp.basename(config)
    for net in engine.get_model_names():
        params = torch.cat([p.detach().double().flatten() for p in engine._models[net].parameters()])
        sums = distributed.gather_objects(float(params.sum()))
        if distributed.is_main():
            print('CHECKSUM', name, net, ' '.join(repr(s) for s in sums), flush=True)


def main(configs, root, save_dir, *opts):
    for config in configs.split(','):
        rank_checksums(config, root, osp.join(save_dir, osp.basename(config)), opts)
    distributed.shutdown()


if __name__ == '__main__':
    main(*sys.argv[1:])
