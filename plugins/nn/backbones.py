"""Shared backbones for the projects, with ImageNet weights from local files only.

Every ResNet-based project builds its trunk here, so ImageNet initialisation
has one loader (:func:`plugins.nn.pretrained.find_weights_file`): it accepts the
torchvision checkpoint layouts (``resnet50-19c8e357.pth``, ``resnet50-0676ba61.pth``,
``resnet50-11ad3fa6.pth``; same parameter names) and fails with a message
naming the expected file when none is found.
"""
import torch.nn as nn
import torchvision

from plugins.nn.pretrained import find_weights_file, load_matching_weights

IMAGENET_FILES = {
    'resnet50': ['resnet50-19c8e357.pth', 'resnet50-0676ba61.pth', 'resnet50-11ad3fa6.pth'],
    'resnet101': ['resnet101-5d3b4d8f.pth', 'resnet101-63fe2227.pth', 'resnet101-cd907fc2.pth'],
}


class ResNetTrunk(nn.Module):
    """torchvision ResNet without pooling and classifier; ``stages`` exposes layer1..layer4.

    Args:
        depth (str): 'resnet50' or 'resnet101'.
        last_stride (int): stride of layer4 (1 keeps a 16x8 map at 256x128, as ReID models do).
        pretrained (bool), pretrained_path (str): ImageNet weights from a local file or folder.
    """

    def __init__(self, depth='resnet50', last_stride=1, pretrained=False, pretrained_path=''):
        super().__init__()
        if depth not in IMAGENET_FILES:
            raise ValueError('Unknown ResNet depth {!r}; expected one of {}'.format(
                depth, sorted(IMAGENET_FILES)))
        net = getattr(torchvision.models, depth)(weights=None)
        if pretrained:
            load_matching_weights(net, find_weights_file(IMAGENET_FILES[depth], pretrained_path))
        if last_stride != 2:
            net.layer4[0].conv2.stride = (last_stride, last_stride)
            net.layer4[0].downsample[0].stride = (last_stride, last_stride)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.stages = nn.ModuleList([net.layer1, net.layer2, net.layer3, net.layer4])
        self.out_channels = net.fc.in_features
        self.last_stride = last_stride
        self.stage_channels = [stage[-1].conv3.out_channels for stage in self.stages]

    def output_sizes(self, height, width):
        """(H, W) after the stem and after each of the four stages, for a ``height`` x ``width`` input.

        For modules whose shapes depend on the map size (relation or spatial
        attention): every strided layer is a 7x7/3x3 (pad 3/1) conv, a 1x1 conv
        or a 3x3 pad-1 max-pool, so each gives ``(n - 1) // stride + 1``.
        """
        def down(n, stride):
            return (n - 1) // stride + 1

        h, w = down(down(height, 2), 2), down(down(width, 2), 2)  # conv1, max-pool
        sizes = [(h, w)]
        for stride in (1, 2, 2, self.last_stride):
            h, w = down(h, stride), down(w, stride)
            sizes.append((h, w))
        return sizes

    def forward(self, x):
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return x
