"""Building a run from a config, shared by ``tools/train.py`` and the benchmark.

Mirrors upstream torchreid's ``scripts/main.py``: config, data manager, model,
optimiser, scheduler, engine, resume; every name is looked up through the
plugin registries, so built-in and plugin models take the same path.
"""
import os
import os.path as osp

import torch
from torchreid.reid import data as host_data
from torchreid.reid import optim as host_optim
from torchreid.reid.utils import (compute_model_complexity, load_pretrained_weights,
                                  set_random_seed)

from plugins import config as C
from plugins import distributed
from plugins.evaluation import protocol as evaluation
from plugins.training.checkpoint import load_weights_strict
from plugins.data.datasets import synthreid
from plugins.training.builders import build_engine
from plugins.nn.flops import count_macs
from plugins.nn.heads import convert_sync_batchnorm
from plugins.nn.models import build_model
from plugins.training.resilience import latest_checkpoint
from plugins.data.samplers import sampler_choice
from plugins.host.allocator import keep_freed_host_memory
from plugins.registry import CONFIG_CHECKS
from plugins.training.schedulers import build_lr_scheduler


def setup_config(config_file='', opts=(), root='', sources=None, targets=None, transforms=None):
    """Defaults, then the YAML file (with ``_BASE_``), then CLI flags, then ``opts`` pairs."""
    cfg = C.get_default_config()
    cfg.use_gpu = torch.cuda.is_available()
    if config_file:
        C.merge_from_file(cfg, config_file)
    if root:
        cfg.data.root = root
    if sources:
        cfg.data.sources = list(sources)
    if targets:
        cfg.data.targets = list(targets)
    if transforms:
        cfg.data.transforms = list(transforms)
    C.merge_from_list(cfg, list(opts or []))
    check_config(cfg)
    return cfg


def check_config(cfg):
    """Refuse a config that cannot run, naming the key to fix: the plugin layer's own rules,
    then every project's registered check (:func:`plugins.registry.register_config`)."""
    evaluation.check_options(**{k: v for k, v in C.engine_run_kwargs(cfg).items()
                                if k in evaluation.OPTION_CHECKS})
    if cfg.loss.name == 'triplet' and cfg.loss.triplet.weight_x == 0 and cfg.train.fixbase_epoch:
        raise ValueError('train.fixbase_epoch needs loss.triplet.weight_x > 0: with weight_x 0 the '
                         'classifier is not in the computational graph')
    if cfg.train.amp == 'bf16' and cfg.use_gpu and not gpu_has_bf16():
        raise ValueError("train.amp 'bf16' needs a GPU with bfloat16 support (compute capability "
                         "8.0 or newer: A100, H100, RTX 30xx and later); {} has none. Use "
                         "train.amp 'fp16' (with gradient scaling) or '' (fp32)".format(
                             torch.cuda.get_device_name()))
    if cfg.train.sync_bn and not cfg.use_gpu:
        raise ValueError('train.sync_bn needs CUDA (torch.nn.SyncBatchNorm has no CPU kernels); '
                         'set train.sync_bn False to train on CPU')
    for name in CONFIG_CHECKS:
        CONFIG_CHECKS.get(name)(cfg)


def gpu_has_bf16():
    """Whether the current GPU computes in bfloat16 natively (not emulated, as on a V100 or T4)."""
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # torch before 2.3: no emulation to exclude
        return torch.cuda.is_bf16_supported()


def setup_process(cfg):
    """Per-process setup before anything is built: torchrun's process group, determinism, allocator.

    Returns True on the process that logs (rank 0, or the only one).
    """
    keep_freed_host_memory()
    distributed.init_from_env(cfg.use_gpu)
    if distributed.is_distributed():
        if cfg.data.type == 'video':
            raise ValueError('Video re-id keeps torchreid\'s own engines, which have no distributed support: '
                             'train it without torchrun')
        # each rank its own augmentation and dropout draws (rank 0 draws as a single process)
        set_random_seed(cfg.train.seed + distributed.get_rank())
    if cfg.train.deterministic:
        os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    elif cfg.use_gpu:
        torch.backends.cudnn.benchmark = True
    return distributed.is_main()


def build_datamanager(cfg):
    """torchreid's data manager, with the config's synthreid spec generated and the options
    of the training samplers passed along with their names."""
    if synthreid.NAME in list(cfg.data.sources) + list(cfg.data.targets):
        synthreid.prepare(cfg.data.root, **C.synthreid_spec(cfg))
    kwargs = C.imagedata_kwargs(cfg) if cfg.data.type == 'image' else C.videodata_kwargs(cfg)
    options = C.sampler_options(cfg)
    for key in ('train_sampler', 'train_sampler_t'):
        if key in kwargs:
            kwargs[key] = sampler_choice(kwargs[key], cfg.train.seed, **options.get(kwargs[key], {}))
    kwargs['batch_size_train'] = distributed.per_rank_batch(cfg.train.batch_size)
    if cfg.data.type == 'image':
        datamanager = host_data.ImageDataManager(**kwargs)
        datamanager.train_loader.dataset.skip_bad_images = cfg.data.skip_bad_images
    else:
        datamanager = host_data.VideoDataManager(**kwargs)
    loaders = [datamanager.train_loader] + [loader for splits in datamanager.test_loader.values()
                                            for loader in splits.values()]
    for loader in loaders:
        loader.worker_init_fn = loader_worker_init
    return datamanager


def loader_worker_init(worker_id):
    """Loader workers leave SIGINT/SIGTERM to the trainer, which stops them after saving.

    torch's own worker SIGTERM handler kills a worker that is signalled along with
    its process group (torchrun, SLURM, ``kill -- -PGID``), and the trainer then
    dies of "DataLoader worker killed" before it can save. Importing ``plugins``
    also applies the host fixes in workers started with spawn or forkserver.
    """
    import signal

    import plugins  # noqa: F401  (host fixes: image reading)

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def build_model_from_config(cfg, num_classes):
    model = build_model(cfg.model.name, num_classes, loss=cfg.loss.name,
                        pretrained=cfg.model.pretrained, use_gpu=cfg.use_gpu,
                        pretrained_path=cfg.model.pretrained_path,
                        height=cfg.data.height, width=cfg.data.width)
    if cfg.model.load_weights:
        if not osp.isfile(cfg.model.load_weights):
            raise FileNotFoundError('model.load_weights: file not found: "{}"'.format(
                cfg.model.load_weights))
        load_pretrained_weights(model, cfg.model.load_weights)
    return model


def build_trained_model(cfg, weights):
    """The config's data manager and its model with ``weights`` loaded strictly, in eval mode.

    Used by the export, visualisation and benchmark tools: the data manager gives
    the class count and the dataset's images.
    """
    datamanager = build_datamanager(cfg)
    model = build_model(cfg.model.name, datamanager.num_train_pids, loss=cfg.loss.name,
                        pretrained=False, use_gpu=cfg.use_gpu, height=cfg.data.height,
                        width=cfg.data.width)
    return load_weights_strict(model, weights).eval(), datamanager


def build_run(cfg, verbose=True):
    """Data manager, model, optimiser, scheduler and engine (resumed if asked); returns the engine.
    Call :func:`setup_process` once before (or use :func:`start_run`).

    ``model.resume auto`` resumes from the newest complete checkpoint in
    ``data.save_dir`` (a fresh start when there is none).
    """
    datamanager = build_datamanager(cfg)
    if verbose:
        print('Building model: {}'.format(cfg.model.name))
    model = build_model_from_config(cfg, datamanager.num_train_pids)
    if verbose:
        size = (1, 3, cfg.data.height, cfg.data.width)
        num_params, flops = compute_model_complexity(model, size)
        print('Model complexity: params={:,} flops={:,} (torchreid\'s count of the layers it '
              'hooks); MACs={:,} (every operation that runs, torch.utils.flop_counter)'.format(
                  num_params, flops, count_macs(model, size)))
    if cfg.use_gpu:
        model = model.cuda()
    if cfg.train.sync_bn and distributed.is_distributed():
        model = convert_sync_batchnorm(model)
    optimizer = host_optim.build_optimizer(model, **C.optimizer_kwargs(cfg))
    scheduler = build_lr_scheduler(optimizer, **C.lr_scheduler_kwargs(cfg))
    engine = build_engine(cfg, datamanager, model, optimizer, scheduler)
    resume = cfg.model.resume
    if resume == 'auto':
        resume = latest_checkpoint(cfg.data.save_dir, engine.get_model_names())
        print('model.resume auto: {}'.format(
            'resuming from "{}"'.format(resume) if resume else
            'no complete checkpoint in "{}", starting from scratch'.format(cfg.data.save_dir)))
    if resume:
        cfg.train.start_epoch = engine.resume(resume)
    return engine


def start_run(cfg, verbose=True):
    """:func:`setup_process` then :func:`build_run`: a run in a process that was not set up yet
    (benchmarks, tests; ``tools/train.py`` sets the process up first, to know where to log)."""
    setup_process(cfg)
    return build_run(cfg, verbose)
