"""Configuration: upstream torchreid's default config plus plugin and project nodes.

``get_default_config()`` holds every key of upstream ``scripts/default_config.py``
with the same defaults, so upstream YAML files load unchanged. On top of it:

* plugin keys (``engine``, ``teacher``, ``synthreid``, ``model.pretrained_path``,
  sampler options), each with a one-line comment;
* one node per project, added by the function the project registered with
  :func:`register_config` (``add_<project>_config(cfg)``);
* ``_BASE_`` inheritance between YAML files (a path, or a list of paths, relative
  to the file that names it);
* strict merging: an unknown key or a wrong type is an error naming the key and
  the file.
"""
import ast
import copy
import os.path as osp

import yaml
from yacs.config import CfgNode as CN

from plugins.data.datasets import synthreid
from plugins.registry import CONFIG_NODES

BASE_KEY = '_BASE_'


def _upstream_defaults(cfg):
    """Keys and defaults of upstream torchreid ``scripts/default_config.py``."""
    cfg.model = CN()
    cfg.model.name = 'resnet50'
    cfg.model.pretrained = True  # load ImageNet weights (from a local file: see pretrained_path)
    cfg.model.load_weights = ''  # path to model weights
    cfg.model.resume = ''  # path to checkpoint for resume training

    cfg.data = CN()
    cfg.data.type = 'image'
    cfg.data.root = 'reid-data'
    cfg.data.sources = ['market1501']
    cfg.data.targets = ['market1501']
    cfg.data.workers = 4  # number of data loading workers
    cfg.data.split_id = 0  # split index
    cfg.data.height = 256  # image height
    cfg.data.width = 128  # image width
    cfg.data.combineall = False  # combine train, query and gallery for training
    cfg.data.transforms = ['random_flip']  # data augmentation
    cfg.data.k_tfm = 1  # number of times to apply augmentation to an image independently
    cfg.data.norm_mean = [0.485, 0.456, 0.406]  # default is imagenet mean
    cfg.data.norm_std = [0.229, 0.224, 0.225]  # default is imagenet std
    cfg.data.save_dir = 'log'  # path to save log
    cfg.data.load_train_targets = False  # load training set from target dataset

    cfg.market1501 = CN()
    cfg.market1501.use_500k_distractors = False  # add 500k distractors to the gallery
    cfg.cuhk03 = CN()
    cfg.cuhk03.labeled_images = False  # use labeled images, if False, use detected images
    cfg.cuhk03.classic_split = False  # use classic split by Li et al. CVPR14
    cfg.cuhk03.use_metric_cuhk03 = False  # use cuhk03's metric for evaluation

    cfg.sampler = CN()
    cfg.sampler.train_sampler = 'RandomSampler'  # sampler for source train loader
    cfg.sampler.train_sampler_t = 'RandomSampler'  # sampler for target train loader
    cfg.sampler.num_instances = 4  # number of instances per identity (K of a PK batch)
    cfg.sampler.num_cams = 1  # number of cameras to sample in a batch (RandomDomainSampler)
    cfg.sampler.num_datasets = 1  # number of datasets to sample in a batch (RandomDatasetSampler)

    cfg.video = CN()
    cfg.video.seq_len = 15  # number of images to sample in a tracklet
    cfg.video.sample_method = 'evenly'  # how to sample images from a tracklet
    cfg.video.pooling_method = 'avg'  # how to pool features over a tracklet

    cfg.train = CN()
    cfg.train.optim = 'adam'
    cfg.train.lr = 0.0003
    cfg.train.weight_decay = 5e-4
    cfg.train.max_epoch = 60
    cfg.train.start_epoch = 0
    cfg.train.batch_size = 32
    cfg.train.fixbase_epoch = 0  # number of epochs to fix base layers
    cfg.train.open_layers = ['classifier']  # layers trained while the others are frozen
    cfg.train.staged_lr = False  # set different lr to different layers
    cfg.train.new_layers = ['classifier']  # newly added layers with default lr
    cfg.train.base_lr_mult = 0.1  # learning rate multiplier for base layers
    cfg.train.lr_scheduler = 'single_step'
    cfg.train.stepsize = [20]  # stepsize to decay learning rate
    cfg.train.gamma = 0.1  # learning rate decay multiplier
    cfg.train.print_freq = 20  # print frequency
    cfg.train.seed = 1  # random seed

    cfg.sgd = CN()
    cfg.sgd.momentum = 0.9  # momentum factor for sgd and rmsprop
    cfg.sgd.dampening = 0.  # dampening for momentum
    cfg.sgd.nesterov = False  # Nesterov momentum
    cfg.rmsprop = CN()
    cfg.rmsprop.alpha = 0.99  # smoothing constant
    cfg.adam = CN()
    cfg.adam.beta1 = 0.9  # exponential decay rate for first moment
    cfg.adam.beta2 = 0.999  # exponential decay rate for second moment

    cfg.loss = CN()
    cfg.loss.name = 'softmax'
    cfg.loss.softmax = CN()
    cfg.loss.softmax.label_smooth = True  # use label smoothing regularizer
    cfg.loss.triplet = CN()
    cfg.loss.triplet.margin = 0.3  # distance margin
    cfg.loss.triplet.weight_t = 1.  # weight to balance hard triplet loss
    cfg.loss.triplet.weight_x = 0.  # weight to balance cross entropy loss

    cfg.test = CN()
    cfg.test.batch_size = 100
    cfg.test.dist_metric = 'euclidean'  # distance metric, ['euclidean', 'cosine']
    cfg.test.normalize_feature = False  # normalize feature vectors before computing distance
    cfg.test.ranks = [1, 5, 10, 20]  # cmc ranks
    cfg.test.evaluate = False  # test only
    cfg.test.eval_freq = -1  # evaluation frequency (-1 means to only test after training)
    cfg.test.start_eval = 0  # start to evaluate after a specific epoch
    cfg.test.rerank = False  # k-reciprocal re-ranking, in every evaluation of the run
    cfg.test.rerank_k1 = 20  # k of the k-reciprocal sets (paper: 20)
    cfg.test.rerank_k2 = 6  # neighbours of the local query expansion (paper: 6)
    cfg.test.rerank_lambda = 0.3  # weight of the original distance (paper: 0.3)
    cfg.test.rerank_chunk = 0  # rows computed at once (0: automatic, about 256 MB a chunk)
    cfg.test.flip = False  # retrieval feature: mean of the image's and its mirror's
    cfg.test.aqe = False  # alpha-weighted query expansion on query and gallery features
    cfg.test.aqe_k = 5  # neighbours (itself included) each feature is expanded with
    cfg.test.aqe_alpha = 3.0  # weight: cosine similarity ** alpha
    cfg.test.visrank = False  # visualize ranked results (only with test.evaluate=True)
    cfg.test.visrank_topk = 10  # top-k ranks to visualize


def _plugin_defaults(cfg):
    """Keys the plugin layer adds for every run, whatever the project."""
    cfg.model.pretrained_path = ''  # local ImageNet weights file, or a folder holding it
    cfg.test.visactmap = False  # read by older upstream YAMLs only; activation maps: tools/visualize.py
    cfg.train.warmup_epochs = 0  # linear LR warm-up epochs before train.lr_scheduler (0: none)
    cfg.train.warmup_factor = 0.01  # warm-up starts at warmup_factor * train.lr
    cfg.train.amp = ''  # mixed precision: '' (fp32), 'bf16', or 'fp16' (with gradient scaling)
    cfg.train.channels_last = False  # NHWC model and batches (faster convolutions on tensor cores)
    cfg.train.nonfinite_patience = 10  # stop after this many non-finite steps in a row (0: no check)
    cfg.train.deterministic = False  # deterministic kernels (a resumed run repeats the same losses)
    cfg.train.sync_bn = False  # SyncBatchNorm across GPUs under torchrun (CUDA only)
    cfg.data.skip_bad_images = False  # skip (and count) unreadable training images instead of stopping
    cfg.sampler.pos_ratio = 0.5  # PairwiseSampler: fraction of positive pairs in a batch
    cfg.sampler.camera_aware = True  # PairwiseSampler: positives from different cameras if possible

    cfg.engine = CN()
    cfg.engine.name = ''  # registered engine; '' picks the one named by loss.name

    cfg.teacher = CN()  # optional frozen-teacher distillation, any engine
    cfg.teacher.weights = ''  # local torchreid checkpoint of the teacher; '' disables it
    cfg.teacher.model = 'resnet50'  # teacher architecture (any build_model name)
    cfg.teacher.weight = 1.0  # weight of the distillation term
    cfg.teacher.temperature = 1.0  # softmax temperature of the KL term
    cfg.teacher.mode = 'kl'  # 'kl' on logits or 'feature' (MSE on retrieval features)

    # generation spec of the embedded dataset; keys and comments: plugins/datasets/synthreid.py
    cfg.synthreid = CN(copy.deepcopy(synthreid.DEFAULT_SPEC))


def get_default_config():
    """Upstream defaults, plugin keys, and every registered project's node."""
    cfg = CN()
    _upstream_defaults(cfg)
    _plugin_defaults(cfg)
    for name in CONFIG_NODES:
        CONFIG_NODES.get(name)(cfg)
    return cfg


def _load_yaml_with_bases(path, chain=()):
    path = osp.abspath(path)
    if not osp.isfile(path):
        raise FileNotFoundError('Config file not found: {}'.format(path))
    if path in chain:
        raise ValueError('Circular _BASE_ in config files: {}'.format(' -> '.join(chain + (path,))))
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError('Config file {} must hold a mapping at top level'.format(path))
    bases = data.pop(BASE_KEY, [])
    layers = []
    for base in [bases] if isinstance(bases, str) else bases:
        base_path = base if osp.isabs(base) else osp.join(osp.dirname(path), base)
        layers.extend(_load_yaml_with_bases(base_path, chain + (path,)))
    layers.append((path, data))
    return layers


REMOVED_KEYS = {
    'train.find_unused_parameters': 'networks are no longer wrapped in DistributedDataParallel '
                                    '(gradients are averaged after each backward), so every '
                                    'config trains under torchrun without it',
}


def _merge_checked(cfg, data, source, prefix=''):
    """Merge a plain dict into ``cfg``; unknown keys and type changes name ``source``."""
    for key, value in data.items():
        full = prefix + key
        if key not in cfg:
            if full in REMOVED_KEYS:
                raise KeyError('Config key {!r} in {} was removed: {}; delete it'.format(
                    full, source, REMOVED_KEYS[full]))
            raise KeyError('Unknown config key {!r} in {}'.format(full, source))
        current = cfg[key]
        if isinstance(current, CN):
            if not isinstance(value, dict):
                raise TypeError(
                    'Config key {!r} in {} must be a mapping, got {!r}'.format(full, source, value)
                )
            _merge_checked(current, value, source, full + '.')
            continue
        cfg[key] = _coerce(current, value, full, source)


def _coerce(current, value, key, source):
    if isinstance(value, str) and not isinstance(current, str):
        value = _literal(value)  # YAML reads 1e-3 as a string, like yacs we decode it
    if isinstance(current, bool) or isinstance(value, bool):
        if type(current) is not type(value):
            raise TypeError(_type_error(key, source, current, value))
        return value
    if isinstance(current, float) and isinstance(value, int):
        return float(value)
    if isinstance(current, (list, tuple)) and isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(current, (list, tuple)) and isinstance(value, str):
        return [value]  # torchreid's YAMLs write single sources as a plain string
    if type(current) is not type(value):
        raise TypeError(_type_error(key, source, current, value))
    return value


def _literal(text):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _type_error(key, source, current, value):
    return 'Config key {!r} in {} expects {} (default {!r}), got {!r}'.format(
        key, source, type(current).__name__, current, value
    )


def merge_from_file(cfg, path):
    """Merge a YAML file and its ``_BASE_`` chain (bases first) into ``cfg``."""
    for source, data in _load_yaml_with_bases(path):
        _merge_checked(cfg, data, source)
    return cfg


def merge_from_list(cfg, opts, source='the command line'):
    """Merge ``KEY VALUE`` pairs (as in upstream ``main.py``) with the same checks."""
    if len(opts) % 2:
        raise ValueError('Options from {} must be KEY VALUE pairs, got {}'.format(source, opts))
    for key, raw in zip(opts[0::2], opts[1::2]):
        node = nested = {}
        parts = key.split('.')
        for part in parts[:-1]:
            nested[part] = {}
            nested = nested[part]
        nested[parts[-1]] = raw  # decoded against the default's type
        _merge_checked(cfg, node, source)
    return cfg


def imagedata_kwargs(cfg):
    """Keyword arguments of ``torchreid.data.ImageDataManager`` (pip 0.2.5 signature)."""
    return {
        'root': cfg.data.root,
        'sources': cfg.data.sources,
        'targets': cfg.data.targets,
        'height': cfg.data.height,
        'width': cfg.data.width,
        'transforms': cfg.data.transforms,
        'k_tfm': cfg.data.k_tfm,
        'norm_mean': cfg.data.norm_mean,
        'norm_std': cfg.data.norm_std,
        'use_gpu': cfg.use_gpu,
        'split_id': cfg.data.split_id,
        'combineall': cfg.data.combineall,
        'load_train_targets': cfg.data.load_train_targets,
        'batch_size_train': cfg.train.batch_size,
        'batch_size_test': cfg.test.batch_size,
        'workers': cfg.data.workers,
        'num_instances': cfg.sampler.num_instances,
        'num_cams': cfg.sampler.num_cams,
        'num_datasets': cfg.sampler.num_datasets,
        'train_sampler': cfg.sampler.train_sampler,
        'train_sampler_t': cfg.sampler.train_sampler_t,
        'cuhk03_labeled': cfg.cuhk03.labeled_images,
        'cuhk03_classic_split': cfg.cuhk03.classic_split,
        'market1501_500k': cfg.market1501.use_500k_distractors,
    }


def videodata_kwargs(cfg):
    """Keyword arguments of ``torchreid.data.VideoDataManager``."""
    return {
        'root': cfg.data.root,
        'sources': cfg.data.sources,
        'targets': cfg.data.targets,
        'height': cfg.data.height,
        'width': cfg.data.width,
        'transforms': cfg.data.transforms,
        'norm_mean': cfg.data.norm_mean,
        'norm_std': cfg.data.norm_std,
        'use_gpu': cfg.use_gpu,
        'split_id': cfg.data.split_id,
        'combineall': cfg.data.combineall,
        'batch_size_train': cfg.train.batch_size,
        'batch_size_test': cfg.test.batch_size,
        'workers': cfg.data.workers,
        'num_instances': cfg.sampler.num_instances,
        'num_cams': cfg.sampler.num_cams,
        'num_datasets': cfg.sampler.num_datasets,
        'train_sampler': cfg.sampler.train_sampler,
        'seq_len': cfg.video.seq_len,
        'sample_method': cfg.video.sample_method,
    }


def sampler_options(cfg):
    """Options of the plugin samplers, read from the config in this one place."""
    return {
        'PKSampler': {'seed': cfg.train.seed},
        'PairwiseSampler': {
            'seed': cfg.train.seed,
            'pos_ratio': cfg.sampler.pos_ratio,
            'camera_aware': cfg.sampler.camera_aware,
        },
    }


def synthreid_spec(cfg):
    return {key: cfg.synthreid[key] for key in cfg.synthreid}


def optimizer_kwargs(cfg):
    return {
        'optim': cfg.train.optim,
        'lr': cfg.train.lr,
        'weight_decay': cfg.train.weight_decay,
        'momentum': cfg.sgd.momentum,
        'sgd_dampening': cfg.sgd.dampening,
        'sgd_nesterov': cfg.sgd.nesterov,
        'rmsprop_alpha': cfg.rmsprop.alpha,
        'adam_beta1': cfg.adam.beta1,
        'adam_beta2': cfg.adam.beta2,
        'staged_lr': cfg.train.staged_lr,
        'new_layers': cfg.train.new_layers,
        'base_lr_mult': cfg.train.base_lr_mult,
    }


def lr_scheduler_kwargs(cfg):
    return {
        'lr_scheduler': cfg.train.lr_scheduler,
        'stepsize': cfg.train.stepsize,
        'gamma': cfg.train.gamma,
        'max_epoch': cfg.train.max_epoch,
        'warmup_epochs': cfg.train.warmup_epochs,
        'warmup_factor': cfg.train.warmup_factor,
    }


def evaluation_kwargs(cfg):
    """How a retrieval feature and distance are computed: the ``test.*`` keys that the engine's
    evaluation, the ranked-list tool and the benchmark honour alike."""
    return {key: cfg.test[key] for key in (
        'dist_metric', 'normalize_feature', 'flip', 'aqe', 'aqe_k', 'aqe_alpha', 'rerank',
        'rerank_k1', 'rerank_k2', 'rerank_lambda', 'rerank_chunk')}


def engine_run_kwargs(cfg):
    return {
        'save_dir': cfg.data.save_dir,
        'max_epoch': cfg.train.max_epoch,
        'start_epoch': cfg.train.start_epoch,
        'fixbase_epoch': cfg.train.fixbase_epoch,
        'open_layers': cfg.train.open_layers,
        'start_eval': cfg.test.start_eval,
        'eval_freq': cfg.test.eval_freq,
        'test_only': cfg.test.evaluate,
        'print_freq': cfg.train.print_freq,
        'visrank': cfg.test.visrank,
        'visrank_topk': cfg.test.visrank_topk,
        'use_metric_cuhk03': cfg.cuhk03.use_metric_cuhk03,
        'ranks': cfg.test.ranks,
        **evaluation_kwargs(cfg),
    }
