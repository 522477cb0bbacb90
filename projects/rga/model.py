"""RGA ResNet-50 for ReID: the official ``ResNet50_RGA_Model`` (rga_model.py) in torchreid's model contract.

ResNet-50 with last stride 1, an :class:`~projects.rga.modules.RGAModule`
after each of the four residual stages, and a BNNeck head (global average
pool -> 2048-d feature -> BatchNorm1d with frozen bias -> bias-free
classifier, std 0.001). Outputs follow torchreid's models: training returns
logits (``loss='softmax'``) or ``(logits, pooled feature)`` (``loss='triplet'``:
label-smoothed CE on the post-BN logits, triplet on the pre-BN feature, as the
official trainer does); eval returns the retrieval feature;
``return_featuremaps=True`` returns the last stage's re-weighted map.

The relation sizes depend on the input size, so a model is built for one
``height`` x ``width`` (the config's ``data.height``/``data.width`` reach the
builder through ``plugins.build_model``; a plain
``torchreid.models.build_model`` call gets 256x128).
"""
import torch.nn as nn

from plugins import ReIDHead, ResNetTrunk, model_builder

from .modules import RGAModule

VARIANTS = {'s': (True, False), 'c': (False, True), 'sc': (True, True)}


class RGANet(nn.Module):
    """ResNet-50 + four RGA modules + BNNeck head.

    Args:
        num_classes (int): training identities.
        loss (str): 'softmax' or 'triplet'.
        variant (str): 's' (RGA-S), 'c' (RGA-C) or 'sc' (RGA-SC, spatial then channel).
        height, width (int): the input size the model is built for.
        last_stride (int): stride of layer4 (1, as the official model).
        ratio (int): ``cha_ratio = spa_ratio = down_ratio`` of the modules (8).
        eval_feature (str): retrieval feature: 'pooled' (the official ``feat_``, default)
            or 'bnneck' (``feat``); the official evaluation reports both.
        pretrained (bool), pretrained_path (str): ImageNet ResNet-50 from a local file.
    """

    def __init__(self, num_classes, loss='softmax', variant='sc', height=256, width=128,
                 last_stride=1, ratio=8, eval_feature='pooled', pretrained=False,
                 pretrained_path=''):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError('Unknown RGA variant {!r}; expected one of {}'.format(
                variant, sorted(VARIANTS)))
        use_spatial, use_channel = VARIANTS[variant]
        self.variant = variant
        self.height, self.width = height, width
        self.trunk = ResNetTrunk('resnet50', last_stride=last_stride, pretrained=pretrained,
                                 pretrained_path=pretrained_path)
        self.rga = nn.ModuleList([
            RGAModule(c, h * w, use_spatial, use_channel, ratio, ratio, ratio)
            for c, (h, w) in zip(self.trunk.stage_channels,
                                 self.trunk.output_sizes(height, width)[1:])
        ])
        self.head = ReIDHead(2048, num_classes, loss, bnneck=True, dropout=0.0,
                             classifier_bias=False, eval_feature=eval_feature)

    def check_input(self, x):
        if tuple(x.shape[-2:]) != (self.height, self.width):
            raise ValueError(
                'RGA-{} model was built for {}x{} inputs but got {}x{}: the relation sizes '
                'depend on the input size; build it with height={}, width={} (data.height, '
                'data.width) or resize the images'.format(
                    self.variant.upper(), self.height, self.width, x.shape[-2], x.shape[-1],
                    x.shape[-2], x.shape[-1]))

    def featuremaps(self, x, return_attention=False):
        """Last stage's re-weighted map; with ``return_attention`` also each stage's attention."""
        self.check_input(x)
        x = self.trunk.stem(x)
        attention = []
        for stage, module in zip(self.trunk.stages, self.rga):
            x = stage(x)
            if return_attention:
                x, maps = module(x, return_attention=True)
                attention.append(maps)
            else:
                x = module(x)
        return (x, attention) if return_attention else x

    def forward(self, x, return_featuremaps=False):
        maps = self.featuremaps(x)
        return maps if return_featuremaps else self.head(maps)


def rga_attention_maps(model, images):
    """``{'stageK_spatial': (N, h, w)}`` or, for channel attention, ``'stageK_channel'``.

    Spatial weights are shown as they are; a channel weighting is shown as the
    energy of the re-weighted map, ``sum_c a_c |x_c|`` (where the attended
    channels respond).
    """
    model.eval()
    x = model.trunk.stem(images)
    maps = {}
    for k, (stage, module) in enumerate(zip(model.trunk.stages, model.rga), 1):
        x, attention = module(stage(x), return_attention=True)
        if 'spatial' in attention:
            maps['stage{}_spatial'.format(k)] = attention['spatial'][:, 0]
        if 'channel' in attention:
            maps['stage{}_channel'.format(k)] = x.abs().sum(1)
    return maps


rga_s_resnet50 = model_builder(RGANet, 'rga_s_resnet50', variant='s')
rga_c_resnet50 = model_builder(RGANet, 'rga_c_resnet50', variant='c')
rga_sc_resnet50 = model_builder(RGANet, 'rga_sc_resnet50', variant='sc')
