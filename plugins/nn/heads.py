"""The shared ReID head: global average pooling, BNNeck, classifier, torchreid's output contract.

Luo et al., "Bag of Tricks and a Strong Baseline for Deep Person Re-identification"
(CVPR-W 2019): the triplet loss reads the pooled feature, the identity
classifier reads the batch-normalised one. Every project with a BNNeck head
(RGA, API-Net, SCAL, ...) builds it here.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from plugins.distributed import all_reduce_with_grad, get_world_size

__all__ = ['BNNeck', 'ReIDHead', 'convert_sync_batchnorm']


class BNNeck(nn.BatchNorm1d):
    """BatchNorm1d whose bias stays at zero.

    The bias is a parameter (state-dict key ``bias`` and parameter counts as in
    the official RGA and BoT code, which set ``requires_grad=False``), and
    ``forward`` reads it detached, so it stays frozen even when torchreid's
    ``open_all_layers`` turns ``requires_grad`` back on: its gradient is always
    ``None`` and no optimiser touches it.

    With ``sync`` (set by :func:`convert_sync_batchnorm` for ``train.sync_bn``) the
    training statistics are those of the global batch over all ranks, as
    SyncBatchNorm's, on any device.
    """

    def __init__(self, dim):
        super().__init__(dim)
        self.bias.requires_grad_(False)
        self.sync = False

    def forward(self, x):
        if self.training:
            self.num_batches_tracked.add_(1)
            if self._synced():
                return self._global_batch_norm(x, update_running_stats=True)
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight,
                            self.bias.detach(), self.training, self.momentum, self.eps)

    def batch_normalise(self, x):
        """What ``forward`` returns for ``x`` in the current mode, without touching the running stats.

        In training mode this normalises with ``x``'s own batch statistics (the
        global batch's with ``sync``), as ``forward`` did when it produced ``x``'s
        neck feature; the running estimates are not updated a second time.
        """
        if not self.training:
            return self(x)
        if self._synced():
            return self._global_batch_norm(x, update_running_stats=False)
        return F.batch_norm(x, None, None, self.weight, self.bias.detach(), training=True,
                            eps=self.eps)

    def _synced(self):
        return self.sync and get_world_size() > 1

    def _global_batch_norm(self, x, update_running_stats):
        """Batch norm with the statistics of every rank's ``x`` together (differentiable all-reduce)."""
        xf = x.float()
        local = torch.cat([xf.sum(0), (xf * xf).sum(0), xf.new_full((1,), x.shape[0])])
        total = all_reduce_with_grad(local)
        dim = x.shape[1]
        count = total[-1]
        mean = total[:dim] / count
        var = (total[dim:2 * dim] / count - mean * mean).clamp_min(0)  # biased, as BN normalises
        if update_running_stats:
            with torch.no_grad():
                self.running_mean.lerp_(mean.detach(), self.momentum)
                self.running_var.lerp_(var.detach() * count / (count - 1), self.momentum)
        y = (xf - mean) * torch.rsqrt(var + self.eps) * self.weight + self.bias.detach()
        return y.to(x.dtype)


def convert_sync_batchnorm(module):
    """``train.sync_bn``: torch's SyncBatchNorm for every BatchNorm of ``module``, except
    that a :class:`BNNeck` stays a BNNeck (frozen bias, one running-statistics update
    per step) with ``sync`` on. Returns the converted module."""
    if isinstance(module, BNNeck):
        module.sync = True
        return module
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in list(module.named_children()):
        setattr(module, name, convert_sync_batchnorm(child))
    return module


class ReIDHead(nn.Module):
    """Feature map -> torchreid's model outputs.

    eval: the retrieval feature; training: logits (``loss='softmax'``) or
    ``(logits, pooled feature)`` (``loss='triplet'``, the triplet term reads the
    pre-neck feature as BoT prescribes).

    Args:
        dim (int): channels of the feature map.
        num_classes (int): training identities.
        loss (str): 'softmax' or 'triplet'.
        bnneck (bool): BatchNorm1d with frozen bias between pooling and classifier.
        dropout (float): dropout before the classifier.
        classifier_bias (bool): the official RGA classifier has none; API-Net's has one.
        eval_feature (str): 'pooled' (pre-neck, default) or 'bnneck' (the neck's output).
    """

    LOSSES = ('softmax', 'triplet')
    EVAL_FEATURES = ('pooled', 'bnneck')

    def __init__(self, dim, num_classes, loss='softmax', bnneck=True, dropout=0.0,
                 classifier_bias=True, eval_feature='pooled'):
        super().__init__()
        if loss not in self.LOSSES:
            raise KeyError('Unsupported loss: {!r} (accepted: {})'.format(loss, list(self.LOSSES)))
        if eval_feature not in self.EVAL_FEATURES:
            raise ValueError('eval_feature must be one of {}, got {!r}'.format(
                self.EVAL_FEATURES, eval_feature))
        self.loss = loss
        self.eval_feature = eval_feature
        self.neck = BNNeck(dim) if bnneck else nn.Identity()
        self.classifier = nn.Sequential(nn.Dropout(dropout),
                                        nn.Linear(dim, num_classes, bias=classifier_bias))
        nn.init.normal_(self.classifier[1].weight, std=0.001)
        if classifier_bias:
            nn.init.zeros_(self.classifier[1].bias)

    def forward(self, maps):
        pooled = self.pool(maps)
        if not self.training:
            return self.neck(pooled) if self.eval_feature == 'bnneck' else pooled
        logits = self.classifier(self.neck(pooled))
        return logits if self.loss == 'softmax' else (logits, pooled)

    @staticmethod
    def pool(maps):
        """Global average pooling, (B, C, h, w) -> (B, C). A mean rather than
        ``AdaptiveAvgPool2d``, whose CUDA backward has no deterministic implementation."""
        return maps.mean((2, 3))

    def neck_features(self, pooled):
        """The classifier-input features of a training output's pooled features.

        Recomputes the neck exactly as ``forward`` applied it (batch statistics in
        training mode) without updating BatchNorm's running statistics again.
        """
        if isinstance(self.neck, BNNeck):
            return self.neck.batch_normalise(pooled)
        return self.neck(pooled)
