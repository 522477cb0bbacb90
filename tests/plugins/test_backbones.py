import pytest
import torch
import torchvision

from plugins.backbones import ResNetTrunk
from plugins.pretrained import PretrainedWeightsNotFound


def test_trunk_shapes_and_last_stride():
    x = torch.randn(2, 3, 64, 32)
    assert ResNetTrunk(last_stride=1)(x).shape == (2, 2048, 4, 2)
    assert ResNetTrunk(last_stride=2)(x).shape == (2, 2048, 2, 1)


def test_imagenet_weights_from_a_local_torchvision_file(tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'empty_home'))
    monkeypatch.setattr(torch.hub, '_hub_dir', None)
    torch.manual_seed(0)
    reference = torchvision.models.resnet50(weights=None)
    torch.save(reference.state_dict(), tmp_path / 'resnet50-0676ba61.pth')
    trunk = ResNetTrunk(pretrained=True, pretrained_path=str(tmp_path))
    assert torch.equal(trunk.stages[3][2].conv3.weight, reference.layer4[2].conv3.weight)
    with pytest.raises(PretrainedWeightsNotFound, match='resnet50-19c8e357.pth'):
        ResNetTrunk(pretrained=True, pretrained_path=str(tmp_path / 'nowhere'))
