"""CASN networks: one ResNet-50 feature extractor shared by an identification head and a Siamese head.

Zheng, Karanam, Wu, Radke, "Re-Identification with Consistent Attentive
Siamese Networks", CVPR 2019. No official code exists; see the README for the
choices made where the paper is silent.

Backbones (the paper's two baselines):

* **IDE**: ResNet-50 (last stride 2), global average pooling -> 2048-d feature,
  a linear identity classifier.
* **PCB**: ResNet-50 (last stride 1), the map pooled into 6 horizontal stripes,
  each reduced to 256-d (1x1 conv, BN, ReLU) with its own classifier; the
  feature is the 6 x 256 concatenation.

The Siamese module reads the same feature through its own FC (``siamese``,
to 512-d) and a verification head on ``(f_1 - f_2)^2`` (``verifier``). Only the
heads differ between the modules, as in the paper. In eval mode the model
returns the retrieval feature; the classifiers and the Siamese head are
training-only and never reach an exported graph.
"""
from collections import namedtuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from plugins import ResNetTrunk, fp32, model_builder

BACKBONES = ('ide', 'pcb')
CASNOutputs = namedtuple('CASNOutputs', ['maps', 'features', 'id_logits', 'siamese'])
CASNOutputs.__doc__ = """One training forward: conv maps A (B, 2048, h, w), retrieval features
(B, D), identity logits (a tensor for IDE, a list of part logits for PCB) and
Siamese embeddings (B, 512)."""


def stripe_pool(maps, parts):
    """Average of ``parts`` horizontal stripes, (B, C, parts, 1): ``AdaptiveAvgPool2d((parts, 1))``.

    Written with adaptive pooling's stripe bounds ``floor(i h / parts)`` to
    ``ceil((i + 1) h / parts)`` as slices, so ONNX export works for any map height
    (the exporter only handles multiples of ``parts``). The bounds use
    non-negative integer division only: traced, it becomes ONNX's truncating
    ``Div``, which agrees with Python's floor division there.
    """
    h = maps.shape[2]
    return torch.stack([maps[:, :, (i * h) // parts:((i + 1) * h + parts - 1) // parts].mean((2, 3))
                        for i in range(parts)], 2).unsqueeze(-1)


class CASNNet(nn.Module):
    """IDE or PCB feature extractor with CASN's identification and Siamese heads.

    ``forward(x, return_outputs=False)``: torchreid's contract (eval: retrieval
    feature; training: identity logits, or ``(logits, feature)`` with
    ``loss='triplet'``); ``return_outputs`` gives a :data:`CASNOutputs`.
    """

    def __init__(self, num_classes, loss='softmax', backbone='ide', parts=6, part_dim=256,
                 siamese_dim=512, pretrained=False, pretrained_path=''):
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError('Unknown CASN backbone {!r}; expected one of {}'.format(
                backbone, list(BACKBONES)))
        if loss not in ('softmax', 'triplet'):
            raise KeyError("Unsupported loss: {!r} (accepted: ['softmax', 'triplet'])".format(loss))
        self.loss, self.backbone = loss, backbone
        self.trunk = ResNetTrunk('resnet50', last_stride=2 if backbone == 'ide' else 1,
                                 pretrained=pretrained, pretrained_path=pretrained_path)
        channels = self.trunk.out_channels
        if backbone == 'ide':
            self.feature_dim = channels
            self.classifier = nn.Linear(channels, num_classes)
        else:
            self.parts = parts
            self.reduce = nn.Sequential(nn.Conv2d(channels, part_dim, 1, bias=False),
                                        nn.BatchNorm2d(part_dim), nn.ReLU())
            self.part_classifiers = nn.ModuleList([nn.Linear(part_dim, num_classes)
                                                   for _ in range(parts)])
            self.feature_dim = parts * part_dim
        self.siamese = nn.Linear(self.feature_dim, siamese_dim)
        self.verifier = nn.Linear(siamese_dim, 1)

    def features(self, maps, frozen_stats=False):
        """Retrieval feature (B, D) of conv maps; ``frozen_stats``: see :meth:`class_scores`."""
        if self.backbone == 'ide':
            return maps.mean((2, 3))
        stripes = stripe_pool(maps, self.parts)
        conv, bn, relu = self.reduce
        x = conv(stripes)
        if frozen_stats and self.training:
            # statistics in fp32 like BatchNorm's own (under autocast x is bf16/fp16, and
            # batch_norm takes reduced-precision inputs only with fp32 statistics and affine)
            stats = x.detach().float()
            mean, var = stats.mean((0, 2, 3)), stats.var((0, 2, 3), unbiased=False)
            x = F.batch_norm(x, mean, var, bn.weight, bn.bias, False, 0.0, bn.eps)
        else:
            x = bn(x)
        return relu(x).flatten(2).transpose(1, 2).flatten(1)  # (B, parts * part_dim), part-major

    def identity_logits(self, features):
        if self.backbone == 'ide':
            return self.classifier(features)
        parts = features.view(features.shape[0], self.parts, -1)
        return [fc(parts[:, i]) for i, fc in enumerate(self.part_classifiers)]

    def class_scores(self, maps):
        """(B, C) identity scores of conv maps with no coupling between images (for Grad-CAM).

        In training mode PCB's BatchNorm normalises with the batch's statistics,
        which would make image j's score depend on image i's map; here those
        statistics are constants, so ``d score_i / d A_j = 0`` for ``i != j`` and
        one backward of the summed scores gives every image's own gradient.
        PCB's score is the sum of its part classifiers' logits.
        """
        logits = self.identity_logits(self.features(maps, frozen_stats=True))
        return logits if self.backbone == 'ide' else torch.stack(logits).sum(0)

    def forward(self, x, return_outputs=False):
        maps = self.trunk(x)
        features = self.features(maps)
        if not self.training:
            return features
        logits = self.identity_logits(features)
        if return_outputs:
            return CASNOutputs(maps, features, logits, self.siamese(features))
        return logits if self.loss == 'softmax' else (logits, features)

    def verification_logits(self, siamese_a, siamese_b):
        """Same-identity logit of each pair from ``(f_a - f_b)^2`` (the Siamese verification head).

        In fp32 under autocast: a feature difference above 256 squares past fp16's range
        (65504), and the head's sum of infinities of both signs is NaN.
        """
        with fp32(siamese_a.device.type):
            return self.verifier((siamese_a.float() - siamese_b.float()).pow(2)).view(-1)


casn_ide_resnet50 = model_builder(CASNNet, 'casn_ide_resnet50', backbone='ide')
casn_pcb_resnet50 = model_builder(CASNNet, 'casn_pcb_resnet50', backbone='pcb')
