"""Mixed precision (train.amp): autocast forwards, fp16 gradient scaling per network."""
import pytest
import torch
import torch.nn.functional as F

import plugins
from plugins import AdversarialStepHook, PluginEngine
from plugins.training.checkpoint import load_checkpoint
from plugins.training.terms import cross_entropy_term
from plugins.training.precision import Precision
from plugins import NoData
from tests.helpers import TinyReIDNet, amp_step


def test_unknown_mode_names_the_accepted_ones():
    with pytest.raises(ValueError, match=r"train.amp must be one of \['', 'bf16', 'fp16'\]"):
        Precision('fp8', 'cpu')


def gan_engine(amp):
    torch.manual_seed(0)
    model = TinyReIDNet(num_classes=4, loss='triplet')
    engine = PluginEngine(NoData(4), model, torch.optim.SGD(model.parameters(), lr=0.1),
                          use_gpu=False, amp=amp)
    engine.loss_terms = [cross_entropy_term(engine, 1.0, True)]
    disc = torch.nn.Linear(8, 1)

    def d_loss(d, engine, batch, outputs):
        return F.softplus(-d(torch.ones_like(outputs[1]))).mean() + F.softplus(d(outputs[1].detach())).mean()

    engine.add_hook(AdversarialStepHook(disc, torch.optim.SGD(disc.parameters(), lr=0.1), d_loss,
                                        g_loss_fn=lambda d, e, b, o: F.softplus(-d(o[1])).mean()))
    return engine, disc


@pytest.mark.parametrize('amp, dtype', [('bf16', torch.bfloat16), ('fp16', torch.float16)])
def test_every_network_steps_under_autocast(amp, dtype, tiny_batch, tmp_path):
    engine, disc = gan_engine(amp)
    before = disc.weight.detach().clone()
    log = amp_step(engine, tiny_batch, dtype, steps=1 if amp == 'bf16' else 20)
    assert {'loss_x', 'discriminator_loss', 'discriminator_adv'} <= set(log)
    assert not torch.equal(before, disc.weight)
    if amp == 'fp16':  # one scaler per optimiser, saved with the main checkpoint
        assert set(engine.precision.state_dict()) == {'model', 'discriminator'}
        engine.save_model(0, 0.0, str(tmp_path))
        ckpt = load_checkpoint(str(tmp_path / 'model' / 'model.pth.tar-1'))
        assert ckpt['scalers']['discriminator']['scale'] == engine.precision.scaler('discriminator').get_scale()
    else:
        assert engine.precision.scaler('model') is None


def test_fp32_default_runs_no_autocast(tiny_batch):
    engine, _ = gan_engine('')
    amp_step(engine, tiny_batch, torch.float32)


def test_config_key_reaches_the_registered_engines():
    cfg = plugins.get_default_config()
    cfg.use_gpu = False
    cfg.train.amp = 'bf16'
    model = TinyReIDNet(num_classes=4)
    engine = plugins.build_engine(cfg, NoData(4), model,
                                  torch.optim.SGD(model.parameters(), lr=0.1), None)
    assert engine.precision.dtype == torch.bfloat16


def test_channels_last_model_and_batches(tiny_batch):
    model = TinyReIDNet(num_classes=4)
    engine = PluginEngine(NoData(4), model, torch.optim.SGD(model.parameters(), lr=0.1),
                          use_gpu=False, channels_last=True)
    engine.loss_terms = [cross_entropy_term(engine, 1.0, True)]
    conv = engine.model.backbone[0]
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert engine.parse_batch(tiny_batch)['img'].is_contiguous(memory_format=torch.channels_last)
    amp_step(engine, tiny_batch, torch.float32)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_fused_steps_skip_on_a_device_flag_and_survive_loading_an_unfused_state():
    from plugins.training.precision import step_unless, use_fused_step
    param = torch.nn.Parameter(torch.ones(3))
    plain = torch.optim.Adam([param], lr=0.1)
    param.grad = torch.ones(3)
    plain.step()  # an older, unfused checkpoint's state (step count on the CPU)
    saved = plain.state_dict()
    optimizer = torch.optim.Adam([param], lr=0.1)
    assert use_fused_step(optimizer)
    optimizer.load_state_dict(saved)  # brings back fused=None with the saved groups
    assert use_fused_step(optimizer) and optimizer.param_groups[0]['fused']
    before, state = param.detach().clone(), {k: v.clone() for k, v in optimizer.state[param].items()}
    step_unless(optimizer, torch.tensor(True))
    assert torch.equal(param, before)  # skipped: weights, moments and step count unchanged
    assert all(torch.equal(optimizer.state[param][k], v) for k, v in state.items())
    step_unless(optimizer, torch.tensor(False))
    assert not torch.equal(param, before) and float(optimizer.state[param]['step']) == 2
    assert not use_fused_step(torch.optim.RMSprop([param], lr=0.1))  # no fused kernels


def test_fused_sgd_after_a_skipped_first_step_and_across_fixbase_equals_plain_sgd():
    """Fused SGD writes no momentum buffer on a skipped first step, and cannot step a group
    whose parameters only partly have buffers: both are handled by zero buffers."""
    from plugins.training.precision import step_unless, use_fused_step
    torch.manual_seed(0)
    head, trunk = torch.nn.Parameter(torch.randn(3)), torch.nn.Parameter(torch.randn(3))
    twin = [torch.nn.Parameter(p.detach().clone()) for p in (head, trunk)]
    kwargs = dict(lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    fused, plain = torch.optim.SGD([head, trunk], **kwargs), torch.optim.SGD(twin, **kwargs)
    assert use_fused_step(fused)
    head.grad = torch.full((3,), float('nan'))
    step_unless(fused, torch.tensor(True))  # a skipped first step (an overflow, say)
    for step in range(3):  # the trunk joins at step 1, as after fixbase_epoch
        grads = [torch.randn(3), torch.randn(3) if step else None]
        head.grad, trunk.grad = grads
        twin[0].grad, twin[1].grad = grads
        step_unless(fused, torch.tensor(False))
        plain.step()
        torch.testing.assert_close(head.detach(), twin[0].detach(), rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(trunk.detach(), twin[1].detach(), rtol=1e-6, atol=1e-7)
