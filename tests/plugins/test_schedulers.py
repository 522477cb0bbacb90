import pytest
import torch

from plugins import config as C
from plugins.training.schedulers import build_lr_scheduler


def rates(scheduler, optimizer, epochs):
    out = []
    for _ in range(epochs):
        out.append(optimizer.param_groups[0]['lr'])
        optimizer.step()
        scheduler.step()
    return out


def make_optimizer(lr=8e-4):
    return torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))], lr=lr)


def test_rga_recipe_warmup_then_halving_matches_the_official_formula():
    """Official RGA: lr_e = 8e-6 + (8e-4 - 8e-6) * e / 20 for e < 20, then x0.5 at 80, 120, ..., 360."""
    optimizer = make_optimizer()
    milestones = list(range(80, 361, 40))
    scheduler = build_lr_scheduler(optimizer, 'multi_step', stepsize=milestones, gamma=0.5,
                                   warmup_epochs=20, warmup_factor=0.01)
    got = rates(scheduler, optimizer, 600)
    expected = [8e-6 + (8e-4 - 8e-6) * e / 20 if e < 20
                else 8e-4 * 0.5 ** sum(m <= e for m in milestones) for e in range(600)]
    assert got == pytest.approx(expected, rel=1e-9)
    assert got[-1] == pytest.approx(3.125e-6)


def test_no_warmup_is_the_host_scheduler_and_cosine_warmup_multiplies():
    optimizer = make_optimizer(1e-3)
    plain = build_lr_scheduler(optimizer, 'cosine', max_epoch=10)
    assert type(plain) is torch.optim.lr_scheduler.CosineAnnealingLR
    optimizer = make_optimizer(1e-3)
    warm = build_lr_scheduler(optimizer, 'cosine', max_epoch=10, warmup_epochs=2, warmup_factor=0.1)
    got = rates(warm, optimizer, 4)
    cosine = [1e-3 * (1 + torch.cos(torch.tensor(e * torch.pi / 10)).item()) / 2 for e in range(4)]
    assert got == pytest.approx([cosine[0] * 0.1, cosine[1] * 0.55, cosine[2], cosine[3]], rel=1e-6)


def test_warmup_state_survives_a_checkpoint_round_trip():
    optimizer = make_optimizer()
    scheduler = build_lr_scheduler(optimizer, 'multi_step', stepsize=[6], gamma=0.5,
                                   warmup_epochs=4)
    rates(scheduler, optimizer, 3)
    # the engine's resume order: build as for a fresh run, then load both states
    resumed_optimizer = make_optimizer()
    resumed = build_lr_scheduler(resumed_optimizer, 'multi_step', stepsize=[6], gamma=0.5,
                                 warmup_epochs=4)
    resumed_optimizer.load_state_dict(optimizer.state_dict())
    resumed.load_state_dict(scheduler.state_dict())
    assert rates(resumed, resumed_optimizer, 6) == pytest.approx(rates(scheduler, optimizer, 6))


@pytest.mark.parametrize('kwargs, message', [
    ({'warmup_epochs': 2, 'warmup_factor': 0.0}, 'warmup_factor'),
    ({'warmup_epochs': -1}, 'warmup_epochs'),
])
def test_bad_warmup_values_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_lr_scheduler(make_optimizer(), 'single_step', stepsize=5, **kwargs)


def test_config_keys_reach_the_scheduler():
    cfg = C.get_default_config()
    C.merge_from_list(cfg, ['train.warmup_epochs', '3', 'train.warmup_factor', '0.1'])
    kwargs = C.lr_scheduler_kwargs(cfg)
    assert kwargs['warmup_epochs'] == 3 and kwargs['warmup_factor'] == 0.1
    optimizer = make_optimizer(1e-2)
    build_lr_scheduler(optimizer, **kwargs)
    assert optimizer.param_groups[0]['lr'] == pytest.approx(1e-3)
