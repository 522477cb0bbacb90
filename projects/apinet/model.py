"""API-Net for person re-identification: a ResNet trunk plus the Attentive Pairwise Interaction module.

Zhuang, Wang, Qiao, "Learning Attentive Pairwise Interaction for Fine-Grained
Classification", AAAI 2020 (arXiv:2002.10191). Equation numbers below are the
paper's Section 3 ("Attentive Pairwise Interaction").

The network has two paths:

* **image path** (training and inference): ResNet trunk -> global average
  pooling -> BNNeck -> shared classifier. In eval mode the model returns the
  retrieval feature, by default the pooled feature (``eval_feature='bnneck'``
  returns the BNNeck output instead); it is the only thing the exported ONNX
  graph computes.
* **pair path** (training only, driven by the ``apinet`` engine): for pairs of
  images of the batch, :class:`AttentivePairInteraction` turns the two features
  into four attentive features, which go through the same shared classifier
  (:meth:`APINet.pair_logits`). It never runs in eval mode, so its parameters
  never reach an exported graph.

torchreid's model contract holds: eval -> features; training -> logits
(``loss='softmax'``) or ``(logits, pooled feature)`` (``loss='triplet'``);
``return_featuremaps=True`` -> the trunk's feature map.
"""
import torch
import torch.nn as nn

from plugins import ReIDHead, ResNetTrunk, model_builder


def gate_vectors(x_m, x_1, x_2):
    """Gate vectors ``g_i = sigmoid(x_m * x_i)``, i = 1, 2 (paper Sec. 3, eq. 2).

    The mutual vector is compared channel by channel with each image's own
    feature; each gate lies in (0, 1).
    """
    return torch.sigmoid(x_m * x_1), torch.sigmoid(x_m * x_2)


def pairwise_interaction(x_1, x_2, g_1, g_2):
    """The four attentive features of a pair (paper Sec. 3, eqs. 3-4).

    ``x_i^self = x_i + x_i * g_i`` (eq. 3: each image highlighted by its own gate) and
    ``x_i^other = x_i + x_i * g_j``, j != i (eq. 4: activated by the partner's gate).

    Returns:
        ``(x_1^self, x_1^other, x_2^self, x_2^other)``.
    """
    return x_1 + x_1 * g_1, x_1 + x_1 * g_2, x_2 + x_2 * g_2, x_2 + x_2 * g_1


class AttentivePairInteraction(nn.Module):
    """The API module: mutual vector (eq. 1), gates (eq. 2), interaction (eqs. 3-4).

    The mutual-vector MLP ``f_m`` maps ``[x_1; x_2]`` (2D) to D through a
    ``hidden_dim`` layer. Like the official code (``map1``, ``drop``, ``map2``
    in ``models.py``) it is Linear -> Dropout -> Linear with **no nonlinearity
    in between**, although the paper calls it an MLP; we follow the code.

    Args:
        dim (int): feature size D.
        hidden_dim (int): width of the mutual MLP (512 in the paper's code).
        dropout (float): dropout between the two linear layers (0.5 in the code).
    """

    def __init__(self, dim, hidden_dim=512, dropout=0.5):
        super().__init__()
        self.mutual = nn.Sequential(
            nn.Linear(2 * dim, hidden_dim), nn.Dropout(dropout), nn.Linear(hidden_dim, dim)
        )

    def mutual_vector(self, x_1, x_2):
        """``x_m = f_m([x_1; x_2])`` (paper Sec. 3, eq. 1)."""
        return self.mutual(torch.cat([x_1, x_2], dim=1))

    def forward(self, x_1, x_2):
        """Paired features (N, D) each -> ``(x_1^self, x_1^other, x_2^self, x_2^other)``."""
        g_1, g_2 = gate_vectors(self.mutual_vector(x_1, x_2), x_1, x_2)
        return pairwise_interaction(x_1, x_2, g_1, g_2)


class APINet(nn.Module):
    """API-Net with a ResNet trunk, adapted to ReID (see the package README).

    Args:
        num_classes (int): training identities (1 is fine for feature extraction).
        loss (str): 'softmax' (training returns logits) or 'triplet' (logits, pooled
            feature). The ``apinet`` engine needs 'triplet': the pair path reads the feature.
        depth (str): 'resnet50' or 'resnet101'.
        last_stride (int): stride of the trunk's last stage; 1 (ReID practice) keeps a
            16x8 map at 256x128. The paper's fine-grained trunk uses 2.
        bnneck (bool): BatchNorm1d with frozen bias between pooling and classifier; its
            output is the classifier's and the pair path's input.
        eval_feature (str): retrieval feature returned in eval mode: 'pooled' (the
            plain image feature, default) or 'bnneck' (the neck's output; BoT's
            "after BN" choice). On synthreid trained from scratch 'pooled' retrieves
            far better (see the README).
        mutual_hidden (int), dropout (float): the API module's MLP width and dropout;
            ``dropout`` is also applied before every call of the shared classifier.
        pretrained (bool), pretrained_path (str): ImageNet weights from a local file.
    """

    def __init__(self, num_classes, loss='softmax', depth='resnet50', last_stride=1, bnneck=True,
                 eval_feature='pooled', mutual_hidden=512, dropout=0.5, pretrained=False,
                 pretrained_path=''):
        super().__init__()
        self.trunk = ResNetTrunk(depth, last_stride=last_stride, pretrained=pretrained,
                                 pretrained_path=pretrained_path)
        self.feature_dim = dim = self.trunk.out_channels
        self.head = ReIDHead(dim, num_classes, loss, bnneck=bnneck, dropout=dropout,
                             classifier_bias=True, eval_feature=eval_feature)
        self.api = AttentivePairInteraction(dim, mutual_hidden, dropout)

    def forward(self, x, return_featuremaps=False):
        maps = self.trunk(x)
        return maps if return_featuremaps else self.head(maps)

    def neck_features(self, pooled):
        """The classifier-input features of a training output's pooled features (no BN stat update)."""
        return self.head.neck_features(pooled)

    def pair_logits(self, features, anchor, partner):
        """Shared-classifier logits of the four attentive features of every pair.

        Args:
            features (Tensor): (B, D) classifier-input features of the batch
                (:meth:`neck_features`); gradients flow back through them.
            anchor, partner (LongTensor): (N,) batch indices of each pair's two images.

        Returns:
            ``(self_logits, other_logits)``, each (2N, C): rows ``0..N-1`` belong to
            the anchors, rows ``N..2N-1`` to the partners; ``self_logits`` come from
            ``x^self`` (eq. 3), ``other_logits`` from ``x^other`` (eq. 4).
        """
        x1_self, x1_other, x2_self, x2_other = self.api(features[anchor], features[partner])
        self_logits = self.head.classifier(torch.cat([x1_self, x2_self]))
        other_logits = self.head.classifier(torch.cat([x1_other, x2_other]))
        return self_logits, other_logits


# builder keyword options (last_stride, bnneck, eval_feature, ...) are APINet's; a config passes
# none of them (plugins.build_model passes only height, width and pretrained_path), so a config
# always gets the ReID defaults: last stride 1, BNNeck, pooled test feature
apinet_resnet50 = model_builder(APINet, 'apinet_resnet50', depth='resnet50')
apinet_resnet101 = model_builder(APINet, 'apinet_resnet101', depth='resnet101')
