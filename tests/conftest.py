"""Shared test fixtures: a tiny torchreid-contract network and a stand-in data manager."""
import pytest
import torch
import torch.nn as nn


class TinyReIDNet(nn.Module):
    """Follows torchreid's model contract: eval -> features; train -> logits or (logits, features)."""

    def __init__(self, num_classes=4, loss='softmax', feat_dim=8, **kwargs):
        super().__init__()
        self.loss = loss
        self.backbone = nn.Sequential(nn.Conv2d(3, feat_dim, 3, padding=1), nn.BatchNorm2d(feat_dim),
                                      nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(feat_dim, num_classes)

    def forward(self, x):
        v = self.backbone(x)
        if not self.training:
            return v
        y = self.classifier(v)
        return y if self.loss == 'softmax' else (y, v)


class FakeDataManager:
    """What ``torchreid.engine.Engine`` reads from a data manager, without any images."""

    def __init__(self, num_train_pids=4):
        self.train_loader = []
        self.test_loader = {}
        self.sources = []
        self.num_train_pids = num_train_pids


@pytest.fixture
def tiny_batch():
    g = torch.Generator().manual_seed(0)
    return {'img': torch.randn(8, 3, 16, 8, generator=g), 'pid': torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]),
            'camid': torch.zeros(8, dtype=torch.long)}


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before, module):
    """Names of the floating-point parameters/buffers of ``module`` that differ from ``before``."""
    after = module.state_dict()
    return {k for k, v in before.items() if v.is_floating_point() and not torch.equal(v, after[k])}
