"""Training steps on a fixed batch, for timing a method's step without a data loader."""
import torch


def pk_batch(batch_size, height, width, num_classes, device, num_instances=4):
    """A fixed random batch laid out as P identities x K images, so every loss is defined."""
    g = torch.Generator().manual_seed(0)
    pids = (torch.arange(batch_size) // num_instances) % max(num_classes, 1)
    return {'img': torch.randn(batch_size, 3, height, width, generator=g).to(device),
            'pid': pids.to(device), 'camid': torch.zeros(batch_size, dtype=torch.long)}


def step_engine(model, num_classes, engine_name='triplet', use_gpu=False, opts=()):
    """A registered engine around ``model`` (CE + triplet at weight 1, SGD) for timing single steps.

    ``opts``: config ``KEY VALUE`` overrides applied last (a project's loss weights, say).
    """
    from plugins.config import get_default_config, merge_from_list
    from plugins.training.builders import build_engine
    from plugins.training.engine import NoData

    cfg = get_default_config()
    cfg.use_gpu = use_gpu
    cfg.engine.name = engine_name
    cfg.loss.name = 'triplet'
    cfg.loss.triplet.weight_t = 1.0
    cfg.loss.triplet.weight_x = 1.0
    merge_from_list(cfg, list(opts))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    return build_engine(cfg, NoData(num_classes), model, optimizer, None)
