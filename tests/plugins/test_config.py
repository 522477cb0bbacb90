import os
import textwrap

import pytest

from plugins.config import get_default_config, merge_from_file, merge_from_list
from plugins.registry import CONFIG_CHECKS, CONFIG_NODES, register_config

# Keys and defaults of upstream torchreid scripts/default_config.py (spot checks of every node).
UPSTREAM_DEFAULTS = {
    'model.name': 'resnet50', 'model.pretrained': True, 'data.root': 'reid-data',
    'data.sources': ['market1501'], 'data.height': 256, 'data.width': 128, 'data.k_tfm': 1,
    'data.transforms': ['random_flip'], 'market1501.use_500k_distractors': False,
    'cuhk03.use_metric_cuhk03': False, 'sampler.train_sampler': 'RandomSampler',
    'sampler.train_sampler_t': 'RandomSampler', 'sampler.num_instances': 4, 'sampler.num_cams': 1,
    'sampler.num_datasets': 1, 'video.seq_len': 15, 'train.optim': 'adam', 'train.lr': 0.0003,
    'train.max_epoch': 60, 'train.stepsize': [20], 'train.seed': 1, 'sgd.momentum': 0.9,
    'rmsprop.alpha': 0.99, 'adam.beta2': 0.999, 'loss.name': 'softmax',
    'loss.softmax.label_smooth': True, 'loss.triplet.margin': 0.3, 'loss.triplet.weight_x': 0.,
    'test.batch_size': 100, 'test.ranks': [1, 5, 10, 20], 'test.eval_freq': -1,
    'test.visrank_topk': 10,
}


def lookup(cfg, dotted):
    for part in dotted.split('.'):
        cfg = cfg[part]
    return cfg


def test_defaults_are_a_superset_of_upstream():
    cfg = get_default_config()
    for key, value in UPSTREAM_DEFAULTS.items():
        assert lookup(cfg, key) == value, key


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_upstream_yaml_loads_unchanged():
    """torchreid's configs/im_r50_softmax_256x128_amsgrad.yaml, verbatim (it has the legacy visactmap)."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'data',
                        'im_r50_softmax_256x128_amsgrad.yaml')
    cfg = merge_from_file(get_default_config(), path)
    assert cfg.model.name == 'resnet50_fc512' and cfg.train.optim == 'amsgrad'
    assert cfg.train.fixbase_epoch == 5 and cfg.test.visactmap is False


def test_base_inheritance_chain_and_override(tmp_path):
    (tmp_path / 'sub').mkdir()
    write(tmp_path, 'base.yaml', """
        train: {lr: 0.1, max_epoch: 7}
        data: {height: 64}
        """)
    write(tmp_path, 'sub/mid.yaml', """
        _BASE_: ../base.yaml
        train: {lr: 0.01}
        """)
    leaf = write(tmp_path, 'sub/leaf.yaml', """
        _BASE_: [mid.yaml]
        train: {weight_decay: 1e-3}
        """)
    cfg = merge_from_file(get_default_config(), leaf)
    assert (cfg.train.lr, cfg.train.max_epoch, cfg.data.height) == (0.01, 7, 64)
    assert cfg.train.weight_decay == pytest.approx(1e-3)  # YAML string '1e-3' decoded


def test_unknown_key_names_key_and_file(tmp_path):
    write(tmp_path, 'base.yaml', "train: {lrr: 0.1}\n")
    leaf = write(tmp_path, 'leaf.yaml', "_BASE_: base.yaml\n")
    with pytest.raises(KeyError, match=r"'train.lrr' in .*base.yaml"):
        merge_from_file(get_default_config(), leaf)


def test_wrong_type_and_missing_base_are_errors(tmp_path):
    bad = write(tmp_path, 'bad.yaml', "train: {max_epoch: 'ten'}\n")
    with pytest.raises(TypeError, match=r"'train.max_epoch' in .*bad.yaml expects int"):
        merge_from_file(get_default_config(), bad)
    orphan = write(tmp_path, 'orphan.yaml', "_BASE_: nowhere.yaml\n")
    with pytest.raises(FileNotFoundError, match='nowhere.yaml'):
        merge_from_file(get_default_config(), orphan)
    loop = write(tmp_path, 'loop.yaml', "_BASE_: loop.yaml\n")
    with pytest.raises(ValueError, match='Circular'):
        merge_from_file(get_default_config(), loop)


def test_merge_from_list_decodes_and_checks():
    cfg = merge_from_list(get_default_config(), ['train.lr', '1e-2', 'data.sources', 'synthreid',
                                                 'model.pretrained', 'False'])
    assert cfg.train.lr == 0.01 and cfg.data.sources == ['synthreid'] and cfg.model.pretrained is False
    with pytest.raises(KeyError, match="'train.nope' in the command line"):
        merge_from_list(cfg, ['train.nope', '1'])


def test_project_config_node_is_added_by_its_function():
    from yacs.config import CfgNode as CN

    def add_demo_config(cfg):
        cfg.demo = CN()
        cfg.demo.alpha = 10.0  # a paper symbol

    register_config('demo', add_demo_config)
    try:
        cfg = get_default_config()
        assert cfg.demo.alpha == 10.0
        with pytest.raises(KeyError, match='Duplicate config node'):
            register_config('demo', add_demo_config)
    finally:
        CONFIG_NODES.unregister('demo')
    assert 'demo' not in get_default_config()


def test_a_project_check_refuses_a_config_when_it_is_read():
    from yacs.config import CfgNode as CN

    from plugins.training.launch import setup_config

    def add_demo_config(cfg):
        cfg.demo = CN()
        cfg.demo.alpha = 10.0

    def check_demo(cfg):
        if cfg.demo.alpha <= 0:
            raise ValueError('demo.alpha must be positive, got {}'.format(cfg.demo.alpha))

    register_config('demo', add_demo_config, check=check_demo)
    try:
        assert setup_config('', ['demo.alpha', '2.0']).demo.alpha == 2.0
        with pytest.raises(ValueError, match='demo.alpha must be positive, got -1.0'):
            setup_config('', ['demo.alpha', '-1.0'])
    finally:
        CONFIG_NODES.unregister('demo')
        CONFIG_CHECKS.unregister('demo')


def test_every_shipped_config_loads():
    import glob
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    paths = glob.glob(os.path.join(repo, 'configs', '**', '*.yaml'), recursive=True)
    assert any(p.endswith('baselines/resnet50_synthreid.yaml') for p in paths)
    for path in paths:
        cfg = merge_from_file(get_default_config(), path)
        assert cfg.model.name, path


def test_shipped_open_layers_name_modules_of_the_model():
    """``train.open_layers`` must name attributes of the built model (torchreid asserts it)."""
    import glob
    from torchreid.reid.utils import open_specified_layers

    import plugins
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    checked = 0
    for path in glob.glob(os.path.join(repo, 'configs', '**', '*.yaml'), recursive=True):
        cfg = merge_from_file(get_default_config(), path)
        if cfg.train.fixbase_epoch and not os.path.basename(path).startswith('_'):
            model = plugins.build_model(cfg.model.name, 3, loss=cfg.loss.name, pretrained=False,
                                        height=cfg.data.height, width=cfg.data.width)
            open_specified_layers(model, cfg.train.open_layers)
            checked += 1
    assert checked >= 1


def test_removed_key_says_why(tmp_path):
    path = tmp_path / 'old.yaml'
    path.write_text('train:\n  find_unused_parameters: True\n')
    with pytest.raises(KeyError, match=r"'train.find_unused_parameters' in .*old.yaml was removed"):
        merge_from_file(get_default_config(), str(path))


def test_bf16_on_a_gpu_without_it_fails_at_config_time(monkeypatch):
    from plugins.training import launch
    monkeypatch.setattr(launch, 'gpu_has_bf16', lambda: False)
    monkeypatch.setattr(launch.torch.cuda, 'get_device_name', lambda *a: 'Tesla V100-SXM2-16GB')
    cfg = get_default_config()
    cfg.use_gpu, cfg.train.amp = True, 'bf16'
    with pytest.raises(ValueError, match=r"train.amp 'bf16' needs a GPU with bfloat16 .*V100"):
        launch.check_config(cfg)
    cfg.train.amp = 'fp16'
    launch.check_config(cfg)


def test_the_tools_config_arguments_and_a_bad_key_named_on_exit():
    import argparse

    from plugins.cli import add_config_arguments, config_or_exit
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, weights_help='weights')
    args = parser.parse_args(['--weights', 'w.pth', 'train.max_epoch', '3'])
    assert (args.config_file, args.root, args.weights) == ('', '', 'w.pth')
    assert config_or_exit(args).train.max_epoch == 3
    args.opts = ['train.no_such_key', '1']
    with pytest.raises(SystemExit, match=r'^Config error: .*train\.no_such_key'):
        config_or_exit(args)
