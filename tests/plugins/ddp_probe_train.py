"""``tools/train.py`` with a BatchNorm-free probe model and a three-network engine.

Run by ``test_distributed.py`` as one process and under ``torch.distributed.run``
with two gloo processes. The probe (the suite's tiny network with GroupNorm) has no BatchNorm (per-rank batch statistics
would differ from the global batch's by design) and its engine trains three
networks: the model (triplet on the global batch + CE), a critic
(:class:`plugins.CriticUpdateHook`) and a discriminator
(:class:`plugins.AdversarialStepHook`), so every kind of update is compared.
"""
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

import plugins
from plugins.training.builders import build_reid_engine

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..'))  # the repository
from tests.helpers import TinyReIDNet, load_tool  # noqa: E402


def build_probe(num_classes, loss='softmax', pretrained=False, use_gpu=False, **kwargs):
    """A tiny torchreid-contract network with GroupNorm instead of BatchNorm."""
    return TinyReIDNet(num_classes, loss, feat_dim=16, norm=lambda channels: nn.GroupNorm(2, channels))


def build_probe_engine(cfg, datamanager, model, optimizer, scheduler):
    engine = build_reid_engine(cfg, datamanager, model, optimizer, scheduler)
    torch.manual_seed(0)
    critic, disc = nn.Linear(16, 1), nn.Linear(16, 1)
    engine.add_hook(plugins.CriticUpdateHook(
        critic, torch.optim.SGD(critic.parameters(), lr=0.05),
        reward_fn=lambda e, b, o: (o[0].argmax(1) == b['pid']).float(),
        inputs_fn=lambda e, b, o: (o[1],), value_weight=0.1))

    def d_loss(d, engine, batch, outputs):
        real = d(torch.ones_like(outputs[1]))
        fake = d(outputs[1].detach())
        return F.softplus(-real).mean() + F.softplus(fake).mean()

    engine.add_hook(plugins.AdversarialStepHook(
        disc, torch.optim.SGD(disc.parameters(), lr=0.05), d_loss,
        g_loss_fn=lambda d, e, b, o: F.softplus(-d(o[1])).mean(), g_weight=0.1))
    return engine


plugins.register_model('ddp_probe_net', build_probe)
plugins.register_engine('ddp_probe', build_probe_engine)

if __name__ == '__main__':
    load_tool('train').main(sys.argv[1:])
