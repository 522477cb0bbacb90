"""Under ``torch.distributed.run``: build a config's run, take a few training steps on each
rank's shard, and print one checksum line per registered network and rank.

Used by project tests whose engines call the model's methods outside DDP's forward
(CASN's verifier, API-Net's pair interaction): their gradients must still be averaged.
Usage: ``python -m torch.distributed.run --standalone --nproc_per_node 2 ddp_rank_sync.py
CONFIG DATA_ROOT SAVE_DIR [KEY VALUE ...]``.
"""
import sys

import torch

from plugins import distributed
from plugins.launch import build_run, setup_config

STEPS = 3


def main(config, root, save_dir, *opts):
    cfg = setup_config(config, ['use_gpu', 'False', 'data.workers', '0', 'data.save_dir', save_dir,
                                *opts], root=root)
    engine = build_run(cfg, verbose=False)
    engine.max_epoch, engine.epoch = 1, 0
    engine.set_model_mode('train')
    for step, data in zip(range(STEPS), engine.train_loader):
        engine.forward_backward(data)
    for name in engine.get_model_names():
        params = torch.cat([p.detach().double().flatten()
                            for p in engine._models[name].parameters()])
        sums = distributed.gather_objects(float(params.sum()))
        if distributed.is_main():
            print('CHECKSUM', name, ' '.join(repr(s) for s in sums), flush=True)
    distributed.shutdown()


if __name__ == '__main__':
    main(*sys.argv[1:])
