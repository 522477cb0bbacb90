import pytest
import torch
import torchreid
from torchreid.reid.utils import FeatureExtractor

import plugins
from plugins.training.checkpoint import save_checkpoint
from plugins.nn.models import build_model, register_model, unregister_model
from plugins.registry import Registry
from tests.helpers import TinyReIDNet


def test_registry_duplicate_and_unknown_names():
    reg = Registry('widget')
    reg.register('a', int)
    with pytest.raises(KeyError, match="Duplicate widget name 'a'.*builtins.int"):
        reg.register('a', float)
    with pytest.raises(KeyError, match=r"Unknown widget: 'b'. Available: \['a'\]"):
        reg.get('b')
    assert reg.names() == ['a'] and 'a' in reg and len(reg) == 1


@pytest.fixture
def tiny_model_name():
    def builder(num_classes, loss='softmax', pretrained=True, use_gpu=True, height=256, width=128):
        net = TinyReIDNet(num_classes, loss)
        net.built_size = (height, width)
        return net

    register_model('tiny_test_net', builder)
    yield 'tiny_test_net'
    unregister_model('tiny_test_net')


def test_registered_model_is_visible_to_host_factory(tiny_model_name, capsys):
    model = torchreid.models.build_model(tiny_model_name, num_classes=5, loss='triplet')
    assert isinstance(model, TinyReIDNet) and model.classifier.out_features == 5
    assert model.built_size == (256, 128)  # the host passes no size: builder defaults
    torchreid.models.show_avai_models()
    assert tiny_model_name in capsys.readouterr().out
    assert tiny_model_name in plugins.available_models()


def test_build_model_passes_config_extras_the_builder_names(tiny_model_name):
    model = build_model(tiny_model_name, 3, height=64, width=32, unrelated=1)
    assert model.built_size == (64, 32)
    model = build_model('resnet18', 3, pretrained=False, height=64, width=32)  # built-in: extras dropped
    assert model.classifier.out_features == 3


def test_feature_extractor_uses_registered_model_and_weights(tiny_model_name, tmp_path):
    trained = build_model(tiny_model_name, 1)
    torch.nn.init.normal_(trained.backbone[0].weight)
    path = save_checkpoint({'state_dict': trained.state_dict(), 'epoch': 1}, str(tmp_path))
    extractor = FeatureExtractor(model_name=tiny_model_name, model_path=path, device='cpu',
                                 image_size=(16, 8), verbose=False)
    images = torch.rand(2, 3, 16, 8)
    feats = extractor(images)
    assert feats.shape == (2, 8)
    assert torch.allclose(feats, trained.eval()(images), atol=1e-6)


def test_duplicate_model_names_are_errors(tiny_model_name):
    with pytest.raises(KeyError, match='Duplicate model'):
        register_model(tiny_model_name, TinyReIDNet)
    with pytest.raises(KeyError, match='torchreid built-in'):
        register_model('resnet50', TinyReIDNet)


def test_unknown_model_lists_available():
    with pytest.raises(KeyError, match="Unknown model: 'no_such_net'.*resnet50"):
        build_model('no_such_net', 3)


def test_model_builder_exposes_the_class_options_and_fixes_the_variant():
    import inspect

    import torch.nn as nn

    from plugins.nn.models import model_builder

    class Net(nn.Module):
        def __init__(self, num_classes, loss='softmax', variant='a', height=256, width=128,
                     pretrained=False, pretrained_path=''):
            super().__init__()
            self.args = (num_classes, loss, variant, height, width, pretrained, pretrained_path)

    build = model_builder(Net, 'net_b', variant='b')
    params = inspect.signature(build).parameters
    assert list(params) == ['num_classes', 'loss', 'pretrained', 'use_gpu', 'height', 'width',
                            'pretrained_path']
    assert build.__name__ == 'net_b' and 'variant' not in params
    assert build(3).args == (3, 'softmax', 'b', 256, 128, True, '')
    plugins.register_model('net_b_test', build)
    try:
        net = plugins.build_model('net_b_test', 4, loss='triplet', pretrained=False, height=64,
                                  width=32, unknown_extra=1)
        assert net.args == (4, 'triplet', 'b', 64, 32, False, '')
    finally:
        unregister_model('net_b_test')


def test_register_models_registers_each_builder_and_its_attention_maps():
    from plugins.nn.models import register_models
    from plugins.registry import ATTENTION_MAPS

    def maps(model, images):
        return {}

    names = ('maps_net_a_test', 'maps_net_b_test')
    register_models({name: TinyReIDNet for name in names}, maps)
    try:
        for name in names:
            assert isinstance(build_model(name, 3, pretrained=False), TinyReIDNet)
            assert ATTENTION_MAPS.get(name) is maps
    finally:
        for name in names:
            unregister_model(name)
            ATTENTION_MAPS.unregister(name)
