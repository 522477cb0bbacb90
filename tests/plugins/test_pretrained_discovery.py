import importlib.metadata
import os
import sys

import pytest
import torch

import plugins
from plugins import discovery
from plugins.nn.models import build_model
from plugins.nn.pretrained import PretrainedWeightsNotFound


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    monkeypatch.setattr(torch.hub, '_hub_dir', None)
    return tmp_path / 'torch_home'


@pytest.mark.parametrize('name, filename', [('resnet18', 'resnet18-5c106cde.pth'),
                                            ('osnet_x0_25', 'osnet_x0_25_imagenet.pth')])
def test_missing_weights_name_the_file_and_never_download(empty_cache, name, filename):
    with pytest.raises(PretrainedWeightsNotFound) as err:
        build_model(name, 10, pretrained=True)
    message = str(err.value)
    assert filename in message and str(empty_cache) in message and 'model.pretrained False' in message


def test_weights_from_local_path_or_hub_cache_are_loaded(empty_cache, tmp_path):
    torch.manual_seed(0)
    source = build_model('resnet18', 1000, pretrained=False)
    local = tmp_path / 'my_weights.pth'
    torch.save(source.state_dict(), local)

    model = build_model('resnet18', 10, pretrained=True, pretrained_path=str(local))
    assert torch.equal(model.conv1.weight, source.conv1.weight)
    assert model.classifier.out_features == 10  # the classifier keeps its new shape

    cache = empty_cache / 'hub' / 'checkpoints'
    cache.mkdir(parents=True)
    os.replace(local, cache / 'resnet18-5c106cde.pth')
    model = build_model('resnet18', 10, pretrained=True)
    assert torch.equal(model.layer1[0].conv1.weight, source.layer1[0].conv1.weight)


def test_downloaders_are_restored_after_a_build():
    import gdown
    before = (torch.hub.load_state_dict_from_url, gdown.download)
    build_model('resnet18', 3, pretrained=False)
    assert (torch.hub.load_state_dict_from_url, gdown.download) == before


class FakeDist(importlib.metadata.Distribution):
    """An installed distribution that declares one project entry point."""

    def __init__(self, module_name):
        self.module_name = module_name

    def read_text(self, filename):
        if filename == 'entry_points.txt':
            return '[torchreid_plugins]\ndemo_project = {}\n'.format(self.module_name)
        if filename == 'METADATA':
            return 'Name: demo-project\nVersion: 0.0.1\n'
        return None

    def locate_file(self, path):
        return path


@pytest.fixture
def install_project(tmp_path, monkeypatch):
    """Make a package with the given ``__init__`` body importable and declared as a project."""

    def install(module_name, body):
        package = tmp_path / module_name
        package.mkdir()
        (package / '__init__.py').write_text(body)
        monkeypatch.syspath_prepend(str(tmp_path))

        class Finder:
            @staticmethod
            def find_distributions(context=None):
                return [FakeDist(module_name)]

        monkeypatch.setattr('sys.meta_path', [*sys.meta_path, Finder])

    yield install
    discovery._loaded.pop('demo_project', None)


def test_installed_projects_are_discovered_and_register_themselves(install_project):
    install_project('demo_reid_project', 'import plugins\n'
                    'from tests.helpers import TinyReIDNet\n'
                    "plugins.register_model('demo_project_net', TinyReIDNet)\n")
    try:
        loaded = plugins.load_projects()
        assert 'demo_project' in loaded
        assert 'demo_project_net' in plugins.available_models()
        assert plugins.load_projects()['demo_project'] is loaded['demo_project']  # once only
    finally:
        if 'demo_project_net' in plugins.MODELS:
            plugins.nn.models.unregister_model('demo_project_net')


def test_broken_project_is_reported_by_name(install_project):
    install_project('broken_reid_project', 'raise RuntimeError("bad weights table")\n')
    with pytest.raises(ImportError, match="project 'demo_project'.*bad weights table"):
        plugins.load_projects()
