"""SCAL: agents, rewards, the critic's and the agents' updates, training, export."""
import copy
import dataclasses
import os

import pytest
import torch

import plugins
from plugins.export import check_parity, export_onnx, training_only_parameters
from plugins.nn.modules import batchnorm_stats_frozen
from plugins.training.launch import setup_config
from projects.scal.engine import build_scal_engine, rewards
from projects.scal.model import (ChannelAgent, SCALNet, SpatialAgent, critic_state,
                                 scal_attention_maps)
from plugins import NoData
from tests.helpers import (REPO, amp_step, changed, run_benchmark_section, snapshot,
                           tiny_synthreid_run)

CONFIG_DIR = os.path.join(REPO, 'configs', 'scal')
KINDS = ['spatial', 'channel']


def pk_batch(n=8, classes=4):
    g = torch.Generator().manual_seed(0)
    return {'img': torch.randn(n, 3, 64, 32, generator=g), 'pid': torch.arange(n) // 2 % classes,
            'camid': torch.zeros(n, dtype=torch.long)}


def make_engine(kind='channel', value_weight=1.0, classes=4, amp='', value_reach='agents'):
    torch.manual_seed(0)
    cfg = plugins.get_default_config()
    cfg.use_gpu = False
    cfg.train.amp = amp
    cfg.loss.name = 'triplet'
    cfg.loss.triplet.weight_x = 1.0
    cfg.scal.value_weight = value_weight
    cfg.scal.value_reach = value_reach
    model = plugins.build_model('scal_{}_resnet50'.format(kind), classes, loss='triplet',
                                pretrained=False, height=64, width=32)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return build_scal_engine(cfg, NoData(classes), model, optimizer, None)


def forward_step(**engine_options):
    """A SCAL engine (:func:`make_engine`), its critic hook, a PK batch and its training forward."""
    engine = make_engine(**engine_options)
    batch = engine.parse_batch(pk_batch())
    engine.set_model_mode('train')
    return engine, engine.hooks[0], batch, engine.model_outputs(batch)


@pytest.mark.parametrize('kind', KINDS)
def test_five_agents_give_attention_in_0_1_with_the_right_shapes(kind):
    torch.manual_seed(0)
    model = SCALNet(5, 'triplet', kind, height=64, width=32).train()
    images = torch.randn(3, 3, 64, 32)
    (logits, feature), attention, states = model(images, return_attention=True)
    assert logits.shape == (3, 5) and len(states) == 5
    # X, the critic's input: the last agent's input pooled, by hand: stem and agents 1-4
    with torch.no_grad():
        x = model.trunk.stem(images)
        for k in range(4):
            a = model.agents[k](x)
            x = x * (a[:, :, None, None] if kind == 'channel' else a.view(3, 1, *x.shape[2:]))
            x = model.trunk.stages[k](x)
    assert torch.allclose(critic_state(states), x.mean((2, 3)), atol=1e-5)
    assert not torch.allclose(critic_state(states), feature, atol=1e-3)  # not the attended feature
    sizes = model.trunk.output_sizes(64, 32)
    channels = [64, 256, 512, 1024, 2048]
    expected = [(3, c) for c in channels] if kind == 'channel' else [(3, h * w) for h, w in sizes]
    assert [tuple(a.shape) for a in attention] == expected == [(3, d) for d in model.attention_dims]
    for a in attention:
        assert a.min() > 0 and a.max() < 1
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 32)).shape == (2, 2048)
    maps = scal_attention_maps(model, torch.randn(2, 3, 64, 32))
    assert [tuple(m.shape) for m in maps.values()] == [(2, h, w) for h, w in sizes]


@pytest.mark.parametrize('kind', KINDS)
def test_without_attention_is_the_same_network_with_unit_attention(kind):
    torch.manual_seed(0)
    model = SCALNet(5, 'softmax', kind, height=64, width=32).eval()
    unit = copy.deepcopy(model)
    for agent, dim in zip(unit.agents, unit.attention_dims):
        agent.forward = lambda x, dim=dim: torch.ones(x.shape[0], dim)
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        assert torch.allclose(model(x, attention=False), unit(x), atol=1e-6)
        assert not torch.allclose(model(x, attention=False), model(x), atol=1e-4)


def test_rewards_on_hand_made_logits():
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [1.0, 0.0, 2.0], [0.0, 0.0, 5.0]])
    plain = torch.tensor([[1.0, 1.0, 0.0], [0.0, 3.0, 0.0], [2.0, 0.0, 1.0], [0.0, 0.0, 5.0]])
    pids = torch.tensor([0, 1, 0, 2])
    reward, r_c, r_a = rewards(logits, plain, pids)
    # image 0: right, probability raised; 1: right, lowered; 2: wrong, lowered; 3: right, equal
    assert r_c.tolist() == [1, 1, 0, 1]
    assert r_a.tolist() == [1, 0, 0, 0]
    assert reward.tolist() == [2, 1, 0, 1]


def test_critic_update_changes_only_the_critic_and_agent_update_no_critic_weight():
    engine, hook, batch, outputs = forward_step()
    model_before, critic_before = snapshot(engine.model), snapshot(hook.critic)
    hook._fit(engine, batch, outputs)
    assert changed(critic_before, hook.critic)
    assert not {k for k in changed(model_before, engine.model) if not k.endswith(('running_mean', 'running_var'))}

    critic_before = snapshot(hook.critic)
    critic_grads = [p.grad.clone() for p in hook.critic.parameters()]  # left by the critic's step
    terms = {t.name: t.weight * t.fn(engine, batch, outputs) for t in engine.loss_terms}
    terms.update(hook.loss_terms(engine, batch, outputs))
    engine.optimizer_step(engine.optimizer, terms)
    assert not changed(critic_before, hook.critic)
    assert all(torch.equal(p.grad, g) for p, g in zip(hook.critic.parameters(), critic_grads))
    moved = changed(model_before, engine.model)
    assert any(k.startswith('agents.') for k in moved) and any(k.startswith('trunk.') for k in moved)


def test_agents_compute_the_papers_formulas_on_hand_made_weights():
    """A^c = sigmoid(W2 relu(W1 X_pool)) and A^s = sigmoid(W2 relu(W1 X_bar)): average
    pooling (not max), ReLU between, sigmoid last, no biases."""
    x = torch.tensor([[[[1.0, 3.0], [0.0, 0.0]], [[-2.0, 0.0], [0.0, -2.0]]]])  # (1, 2, 2, 2)
    w1 = torch.zeros(8, 2)
    w1[0], w1[1] = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])  # hidden 1 is negative
    w2 = torch.zeros(2, 8)
    w2[0, 0], w2[0, 1], w2[1, 0] = 2.0, 5.0, -1.0
    channel = ChannelAgent(2)
    with torch.no_grad():
        channel.excite[0].weight.copy_(w1)
        channel.excite[2].weight.copy_(w2)
    # X_pool = (1, -1); W1 X_pool = (1, -1, 0...); relu -> (1, 0, ...); W2 -> (2, -1)
    assert torch.allclose(channel(x), torch.sigmoid(torch.tensor([[2.0, -1.0]])))
    spatial = SpatialAgent(4)
    w1 = torch.zeros(8, 4)
    w1[0] = torch.tensor([1.0, 1.0, 0.0, 0.0])
    w1[1] = torch.tensor([0.0, 0.0, 0.0, 1.0])
    w2 = torch.zeros(4, 8)
    w2[:, 0], w2[:, 1] = torch.tensor([1.0, 0.0, -1.0, 0.5]), 3.0
    with torch.no_grad():
        spatial.excite[0].weight.copy_(w1)
        spatial.excite[2].weight.copy_(w2)
    # X_bar = channel mean = (-0.5, 1.5, 0, -1); W1 X_bar = (1, -1, 0...); relu -> (1, 0, ...)
    assert torch.allclose(spatial(x), torch.sigmoid(torch.tensor([[1.0, 0.0, -1.0, 0.5]])))
    assert torch.allclose(SpatialAgent.reweight(x, spatial(x)),
                          x * torch.sigmoid(torch.tensor([[1.0, 0.0], [-1.0, 0.5]])))


def test_critic_is_fitted_to_the_reward_by_mse():
    """J_mse = mean (V - R)^2 with R the step's reward, on a critic made constant (V = 0.5)."""
    engine, hook, batch, outputs = forward_step()
    reward = torch.tensor([2.0, 1.0, 0.0, 1.0, 2.0, 0.0, 0.0, 1.0])
    outputs = dataclasses.replace(outputs, reward=reward)
    with torch.no_grad():
        hook.critic.net[-1].weight.zero_()
        hook.critic.net[-1].bias.fill_(0.5)
    expected = ((0.5 - reward) ** 2).mean()  # (2.25 + 0.25 + 0.25 + 0.25 + 2.25 + 0.25 * 3) / 8
    assert hook._fit(engine, batch, outputs)['critic_mse'].item() == pytest.approx(expected.item())
    assert hook.critic.net[-1].bias.item() > 0.5  # the step moves V towards the mean reward 0.875


@pytest.mark.parametrize('reach', ['agents', 'network'])
def test_value_term_is_minus_the_critic_and_trains_what_value_reach_names(reach):
    """J_cri = -w mean V(X, A), the critic frozen. 'agents' (the paper's J_cri(theta)): the
    actor gradient dV/dA dA/dtheta with every agent's input held fixed, nothing for the
    trunk; 'network': through the states as well. A small step on it raises V."""
    engine, hook, batch, outputs = forward_step(value_weight=0.5, value_reach=reach)
    states, attention = outputs.states, outputs.attention
    agents, trunk = list(engine.model.agents.parameters()), list(engine.model.trunk.parameters())
    if reach == 'agents':  # independent of the engine: agents re-run on detached inputs
        fixed = [x.detach() for x in states]
        value = hook.critic(fixed[-1].mean((2, 3)), *(a(x) for a, x in zip(engine.model.agents, fixed)))
    else:
        value = hook.critic(states[-1].mean((2, 3)), *attention)
    value = value.mean()
    expected = torch.autograd.grad(-0.5 * value, agents, retain_graph=True)
    term = hook.loss_terms(engine, batch, outputs)['critic_value']
    assert term.item() == pytest.approx(-0.5 * value.item(), rel=1e-6)
    engine.model.zero_grad(set_to_none=True)
    hook.critic.zero_grad(set_to_none=True)
    term.backward()
    assert all(p.grad is None for p in hook.critic.parameters())  # the critic is frozen
    for p, g in zip(agents, expected):
        assert torch.allclose(p.grad, g, atol=1e-7)
    trunk_grads = [p.grad for p in trunk if p.grad is not None and p.grad.abs().sum() > 0]
    assert (trunk_grads == []) == (reach == 'agents')
    with torch.no_grad():  # a small descent step on -V raises V (same batch statistics)
        for p in agents + trunk:
            if p.grad is not None:
                p -= 1e-3 * p.grad / max(p.grad.abs().max().item(), 1e-12)
        _, attention, states = engine.model(batch['img'], return_attention=True)
        assert hook.critic(critic_state(states), *attention).mean() > value


def test_critic_mse_falls_on_a_fixed_batch():
    engine = make_engine()
    hook = engine.hooks[0]
    batch = engine.parse_batch(pk_batch())
    engine.set_model_mode('train')
    with torch.no_grad():
        outputs = engine.model_outputs(batch)
    mses = [hook._fit(engine, batch, outputs)['critic_mse'] for _ in range(30)]
    assert sum(mses[-5:]) / 5 < 0.25 * mses[0]


def test_reference_pass_shares_the_stem_and_leaves_batchnorm_statistics_alone():
    engine = make_engine()
    batch = engine.parse_batch(pk_batch())
    engine.set_model_mode('train')
    separate = copy.deepcopy(engine.model)
    reference = snapshot(engine.model)
    stem_calls = []
    engine.model.trunk.stem.register_forward_hook(lambda *args: stem_calls.append(1))
    outputs, attention, states, plain = engine.model(batch['img'], return_attention=True,
                                                     with_reference=True)
    assert len(stem_calls) == 1  # one stem pass feeds both
    # the reference equals a separate no-attention pass with batch statistics
    with torch.no_grad(), batchnorm_stats_frozen(separate):
        expected = separate(batch['img'], attention=False)
    for got, want in zip(plain, expected):  # (logits, feature) of the triplet head
        assert torch.allclose(got, want, atol=1e-4)
    assert not plain[0].requires_grad and outputs[0].requires_grad
    # the main forward updated the running statistics once, the reference not at all
    separate(batch['img'])
    assert changed(reference, engine.model)
    assert not changed(snapshot(separate), engine.model)
    norms = [m for m in engine.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(m.momentum == 0.1 and m.num_batches_tracked == 1 for m in norms)
    with pytest.raises(ValueError, match='return_attention'):
        engine.model(batch['img'], with_reference=True)


def test_a_step_logs_every_term_and_reward():
    engine = make_engine()
    engine.set_model_mode('train')
    log = engine.forward_backward(pk_batch())
    assert {'loss_t', 'loss_x', 'critic_value', 'critic_mse', 'acc', 'reward', 'reward_c',
            'reward_a'} <= set(log)
    assert 0 <= log['reward'] <= 2 and log['reward'] == pytest.approx(log['reward_c'] + log['reward_a'])


def test_a_short_run_on_generated_data_lowers_the_reid_loss(tmp_path):
    engine = tiny_synthreid_run(os.path.join(CONFIG_DIR, 'scal_channel_resnet50_synthreid.yaml'), tmp_path)
    assert type(engine).__name__ == 'SCALEngine' and engine.get_model_names() == ['model', 'critic']
    batch = next(iter(engine.train_loader))
    engine.set_model_mode('train')
    losses = [engine.forward_backward(batch)['loss_x'] for _ in range(8)]
    assert sum(losses[-2:]) < 0.8 * sum(losses[:2])


@pytest.mark.parametrize('kind', KINDS)
def test_inference_and_onnx_export_without_the_critic(tmp_path, kind):
    engine = make_engine(kind)
    model = engine.model
    engine.set_model_mode('train')
    with torch.no_grad():
        model(torch.randn(8, 3, 64, 32))
    model.eval()
    example = torch.randn(2, 3, 64, 32)
    assert not [n for n in training_only_parameters(model, example) if n.startswith(('agents', 'trunk'))]
    path = export_onnx(model, str(tmp_path / 'scal.onnx'), 64, 32, [0.5] * 3, [0.5] * 3,
                       model_name='scal_{}_resnet50'.format(kind))
    report = check_parity(model, path, [torch.randn(n, 3, 64, 32) for n in (1, 3)])
    assert report['max_rel_diff'] <= 1e-4 and report['feature_dim'] == 2048
    assert not any('critic' in n for n, _ in model.named_parameters())


def test_shipped_configs_load_and_wrong_sizes_or_models_are_named():
    for name in os.listdir(CONFIG_DIR):
        cfg = setup_config(os.path.join(CONFIG_DIR, name))
        assert cfg.engine.name == 'scal' and cfg.model.name.startswith('scal_')
    model = SCALNet(3, kind='spatial', height=64, width=32)
    with pytest.raises(ValueError, match='built for 64x32 inputs but got 96x48'):
        model(torch.randn(1, 3, 96, 48))
    with pytest.raises(ValueError, match="Unknown SCAL attention kind 'both'"):
        SCALNet(3, kind='both')
    cfg = plugins.get_default_config()
    net = plugins.build_model('resnet18', 3, pretrained=False)
    with pytest.raises(TypeError, match="engine 'scal' needs a SCAL model"):
        build_scal_engine(cfg, NoData(3), net, torch.optim.SGD(net.parameters(), lr=0.1), None)


def test_benchmark_section_reports_the_ratio_to_the_plain_step(tmp_path):
    section, markdown = run_benchmark_section('scal', tmp_path)
    (run,) = section['runs'].values()
    assert run['plain_s'] > 0 and run['ratio'] == pytest.approx(run['scal_s'] / run['plain_s'])
    assert 'without critic' in markdown


def test_model_apply_and_host_complexity_work():
    """Agents must not shadow ``nn.Module.apply`` (init functions and torchreid's counter use it)."""
    from torchreid.reid.utils import compute_model_complexity
    model = SCALNet(5, kind='channel', height=64, width=32)
    seen = []
    model.apply(lambda m: seen.append(type(m).__name__))
    assert seen.count('ChannelAgent') == 5
    params, flops = compute_model_complexity(model, (1, 3, 64, 32))
    assert params > 23e6 and flops > 0


def test_agents_and_critic_train_under_bf16_autocast():
    engine = make_engine(amp='bf16')
    critic = {n: p.detach().clone() for n, p in engine.hooks[0].critic.named_parameters()}
    log = amp_step(engine, pk_batch())
    assert {'loss_x', 'loss_t', 'critic_value', 'critic_mse', 'reward'} <= set(log)
    assert all(not torch.equal(p, critic[n]) for n, p in engine.hooks[0].critic.named_parameters())
