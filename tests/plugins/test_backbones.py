import pytest
import torch
import torchvision

from plugins.nn.backbones import ResNetTrunk
from plugins.nn.pretrained import PretrainedWeightsNotFound


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


@pytest.mark.parametrize('height, width, last_stride', [(96, 40, 1), (65, 33, 2), (256, 128, 1)])
def test_output_sizes_match_the_trunk(height, width, last_stride):
    trunk = ResNetTrunk('resnet50', last_stride=last_stride).eval()
    sizes = trunk.output_sizes(height, width)
    with torch.no_grad():
        x = trunk.stem(torch.randn(1, 3, height, width))
        assert tuple(x.shape[-2:]) == sizes[0]
        for stage, size, channels in zip(trunk.stages, sizes[1:], trunk.stage_channels):
            x = stage(x)
            assert tuple(x.shape[-2:]) == size and x.shape[1] == channels
