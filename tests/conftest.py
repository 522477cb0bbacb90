"""Shared test helpers: a tiny torchreid-contract network, a stand-in data manager,
tiny synthreid options and a way to run the tools as a user does."""
import importlib.util
import os
import subprocess
import sys

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


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# config overrides that make a synthreid dataset of a few dozen 32x16 images
TINY_SYNTHREID = ['synthreid.num_train_ids', '6', 'synthreid.num_test_ids', '5',
                  'synthreid.num_cams', '3', 'synthreid.cams_per_id', '[2, 3]',
                  'synthreid.images_per_id_per_cam', '[2, 3]', 'synthreid.num_distractors', '6',
                  'synthreid.num_junk', '3', 'synthreid.height', '32', 'synthreid.width', '16']


def run_tool(name, *args, cwd, timeout=600):
    """Run ``tools/<name>.py`` in a subprocess; returns (exit code, stdout + stderr)."""
    proc = subprocess.run([sys.executable, os.path.join(REPO, 'tools', name + '.py'), *args],
                          cwd=cwd, capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr


def load_tool(name):
    """Import ``tools/<name>.py`` as a module, to call its ``main`` in-process."""
    spec = importlib.util.spec_from_file_location('tool_' + name,
                                                  os.path.join(REPO, 'tools', name + '.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_benchmark_section(name, out_dir):
    """``tools/benchmark.py --sections NAME --quick``: returns (the section's JSON result, the Markdown)."""
    import json
    load_tool('benchmark').main(['--sections', name, '--quick', '--out-dir', str(out_dir)])
    report = json.loads((out_dir / 'benchmark.json').read_text())
    return report['sections'][name], (out_dir / 'benchmark.md').read_text()
