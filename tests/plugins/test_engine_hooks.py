import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from plugins.training.checkpoint import save_checkpoint
from plugins.training.engine import PluginEngine
from plugins.training.terms import LossTerm
from plugins import NoData
from plugins.nn.modules import frozen
from plugins.training.hooks import AdversarialStepHook, CriticUpdateHook, Hook, TeacherDistillationHook
from tests.helpers import TinyReIDNet, changed, snapshot


def ce_term():
    return LossTerm('loss_x', 1.0, lambda e, b, o: F.cross_entropy(o[0], b['pid']))


def make_engine(hooks=(), lr=0.1, loss='triplet'):
    torch.manual_seed(0)
    model = TinyReIDNet(4, loss)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1)
    return PluginEngine(NoData(4), model, optimizer, scheduler, use_gpu=False,
                        loss_terms=[ce_term()], hooks=hooks)


def make_critic_hook(lr=0.1, update_first=False):
    critic = nn.Linear(8, 1)
    return CriticUpdateHook(
        critic, torch.optim.SGD(critic.parameters(), lr=lr),
        reward_fn=lambda e, b, o: (o[0].argmax(1) == b['pid']).float() + 1.0,
        inputs_fn=lambda e, b, o: (o[1],), update_first=update_first)


def test_plain_step_changes_model_and_logs_each_term(tiny_batch):
    engine = make_engine()
    before = snapshot(engine.model)
    summary = engine.forward_backward(tiny_batch)
    assert set(summary) == {'loss_x'} and summary['loss_x'] > 0
    assert changed(before, engine.model)


def test_frozen_blocks_parameter_gradients_but_not_input_gradients():
    net = nn.Linear(3, 1)
    x = torch.randn(2, 3, requires_grad=True)
    with frozen(net):
        net(x).sum().backward()
    assert net.weight.grad is None and x.grad is not None
    assert all(p.requires_grad for p in net.parameters())


@pytest.mark.parametrize('update_first', [False, True])
def test_critic_hook_updates_only_critic_and_value_term_only_main(tiny_batch, update_first):
    hook = make_critic_hook(update_first=update_first)
    engine = make_engine([hook])
    assert 'critic' in engine.get_model_names()  # checkpointed and LR-stepped with the model

    # the critic update alone changes only critic weights
    engine.model.train()
    outputs = engine.model(tiny_batch['img'])
    model_before, critic_before = snapshot(engine.model), snapshot(hook.critic)
    log = hook._fit(engine, tiny_batch, outputs)
    assert changed(critic_before, hook.critic) and not changed(model_before, engine.model)
    assert log['critic_mse'] > 0

    # the -V term trains the main model and leaves the critic's gradient untouched
    hook.critic.zero_grad(set_to_none=True)
    value = hook.loss_terms(engine, tiny_batch, outputs)['critic_value']
    value.backward()
    assert hook.critic.weight.grad is None
    assert engine.model.backbone[0].weight.grad.abs().sum() > 0

    # a full engine step with a frozen critic optimiser never moves the critic
    for group in hook.optimizer.param_groups:
        group['lr'] = 0.0
    critic_before, model_before = snapshot(hook.critic), snapshot(engine.model)
    summary = engine.forward_backward(tiny_batch)
    assert {'loss_x', 'critic_value', 'critic_mse'} <= set(summary)
    assert not changed(critic_before, hook.critic) and changed(model_before, engine.model)


def test_critic_mse_falls_on_fixed_batch(tiny_batch):
    hook = make_critic_hook(lr=0.5)
    engine = make_engine([hook])
    engine.model.eval()
    with torch.no_grad():
        feats = engine.model(tiny_batch['img'])
    outputs = (torch.zeros(8, 4), feats)
    mses = [hook._fit(engine, tiny_batch, outputs)['critic_mse'] for _ in range(30)]
    assert mses[-1] < 0.5 * mses[0]


def make_adversarial_hook(lr=0.1):
    disc = nn.Linear(8, 1)

    def d_loss(D, e, b, o):  # LSGAN: real ~ N(1, 1) features, fake = detached model features
        real = torch.randn_like(o[1]) + 1
        return ((D(real) - 1) ** 2).mean() + (D(o[1].detach()) ** 2).mean()

    def g_loss(D, e, b, o):
        return ((D(o[1]) - 1) ** 2).mean()

    return AdversarialStepHook(disc, torch.optim.SGD(disc.parameters(), lr=lr), d_loss, g_loss)


def test_adversarial_hook_d_step_owns_only_d(tiny_batch):
    hook = make_adversarial_hook()
    engine = make_engine([hook], lr=0.0)  # main optimiser frozen: only D may move
    model_before, d_before = snapshot(engine.model), snapshot(hook.discriminator)
    summary = engine.forward_backward(tiny_batch)
    assert {'loss_x', 'discriminator_loss', 'discriminator_adv'} <= set(summary)
    assert changed(d_before, hook.discriminator)
    assert not (changed(model_before, engine.model) - {'backbone.1.running_mean', 'backbone.1.running_var'})


def test_adversarial_hook_generator_term_never_moves_d(tiny_batch):
    hook = make_adversarial_hook(lr=0.0)  # D optimiser frozen
    engine = make_engine([hook])
    model_before, d_before = snapshot(engine.model), snapshot(hook.discriminator)
    engine.forward_backward(tiny_batch)
    assert not changed(d_before, hook.discriminator) and changed(model_before, engine.model)
    engine.model.train()
    outputs = engine.model(tiny_batch['img'])
    hook.discriminator.zero_grad(set_to_none=True)
    hook.loss_terms(engine, tiny_batch, outputs)['discriminator_adv'].backward()
    assert hook.discriminator.weight.grad is None


def save_teacher(tmp_path, model_name='resnet18', num_classes=4):
    from plugins.nn.models import build_model
    torch.manual_seed(1)
    teacher = build_model(model_name, num_classes, loss='triplet', pretrained=False)
    return save_checkpoint({'state_dict': teacher.state_dict(), 'epoch': 1}, str(tmp_path / 'teacher'))


def test_teacher_hook_is_frozen_unsaved_and_trains_student(tiny_batch, tmp_path):
    path = save_teacher(tmp_path)
    hook = TeacherDistillationHook.from_checkpoint('resnet18', path, num_classes=4, weight=2.0,
                                                   temperature=2.0)
    engine = make_engine([hook])
    teacher_before, model_before = snapshot(hook.teacher), snapshot(engine.model)
    images = torch.rand(8, 3, 32, 16)
    batch = dict(tiny_batch, img=images)
    for _ in range(3):
        summary = engine.forward_backward(batch)
    assert summary['teacher_kl'] > 0
    assert not changed(teacher_before, hook.teacher)  # weights and BN statistics
    assert changed(model_before, engine.model)
    assert 'teacher' not in engine.get_model_names()
    engine.save_model(0, 0.0, str(tmp_path / 'run'))
    assert sorted(p.name for p in (tmp_path / 'run').iterdir()) == ['model']


def test_teacher_kl_is_zero_for_identical_logits(tiny_batch):
    teacher = TinyReIDNet(4, 'triplet')
    hook = TeacherDistillationHook(teacher, student_fn=lambda e, b, o: (teacher(b['img'])[0], None))
    engine = make_engine([hook])
    term = hook.loss_terms(engine, tiny_batch, None)['teacher_kl']
    assert term.item() == pytest.approx(0.0, abs=1e-6)


def test_teacher_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match='missing_teacher.pth'):
        TeacherDistillationHook.from_checkpoint('resnet18', str(tmp_path / 'missing_teacher.pth'), 4)
    path = save_teacher(tmp_path, num_classes=4)
    with pytest.raises(ValueError, match="model 'resnet18' with 7 classes: Weights .* do not fit"):
        TeacherDistillationHook.from_checkpoint('resnet18', path, num_classes=7)
    with pytest.raises(ValueError, match='Unknown distillation mode'):
        TeacherDistillationHook(TinyReIDNet(), mode='cosine')


class CountingHook(Hook):
    name = 'counter'

    def __init__(self):
        self.steps = 0

    def after_step(self, engine, batch, outputs):
        self.steps += 1

    def state_dict(self):
        return {'steps': self.steps}

    def load_state_dict(self, state):
        self.steps = state['steps']


def test_save_and_resume_round_trip_restores_every_network(tiny_batch, tmp_path):
    engine = make_engine([make_critic_hook(), CountingHook()])
    for _ in range(3):
        engine.forward_backward(tiny_batch)
    engine.update_lr()
    engine.save_model(epoch=1, rank1=torch.tensor(0.5), save_dir=str(tmp_path))

    fresh = make_engine([make_critic_hook(lr=0.3), CountingHook()], lr=0.7)
    start = fresh.resume(str(tmp_path / 'model' / 'model.pth.tar-2'))
    assert start == 2 and fresh.hooks[1].steps == 3
    for name in ('model', 'critic'):
        old, new = engine._models[name].state_dict(), fresh._models[name].state_dict()
        assert all(torch.equal(old[k], new[k]) for k in old)
        assert fresh._optims[name].param_groups[0]['lr'] == engine._optims[name].param_groups[0]['lr']
    assert fresh.scheduler.last_epoch == engine.scheduler.last_epoch == 1
    momentum_old = engine.optimizer.state_dict()['state']
    momentum_new = fresh.optimizer.state_dict()['state']
    assert momentum_old.keys() == momentum_new.keys()

    # continuing both gives identical weights
    engine.forward_backward(tiny_batch)
    fresh.forward_backward(tiny_batch)
    assert all(torch.allclose(a, b) for a, b in zip(engine.model.parameters(), fresh.model.parameters()))


def test_resume_names_a_missing_network_checkpoint(tiny_batch, tmp_path):
    engine = make_engine()
    engine.save_model(epoch=0, rank1=0.0, save_dir=str(tmp_path))
    with_critic = make_engine([make_critic_hook()])
    with pytest.raises(FileNotFoundError, match='critic'):
        with_critic.resume(str(tmp_path / 'model' / 'model.pth.tar-1'))


def test_duplicate_hook_names_are_errors():
    engine = make_engine([CountingHook()])
    with pytest.raises(KeyError, match="'counter' is already attached"):
        engine.add_hook(CountingHook())


def test_finish_outputs_runs_after_the_hooks_updates_and_feeds_the_loss_terms(tiny_batch):
    """The step contract: model_outputs, the hooks' after_forward (an adversary's update), then
    finish_outputs, whose result the loss terms and after_step receive."""
    order = []

    class Recording(Hook):
        name = 'recording'

        def after_forward(self, engine, batch, outputs):
            order.append('after_forward')

        def after_step(self, engine, batch, outputs):
            order.append(('after_step', outputs[2]))

    class TwoStage(PluginEngine):
        def model_outputs(self, batch):
            order.append('model_outputs')
            return super().model_outputs(batch)

        def finish_outputs(self, batch, outputs):
            order.append('finish_outputs')
            return (*outputs, 'finished')

    torch.manual_seed(0)
    model = TinyReIDNet(4, 'triplet')
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    seen = []
    term = LossTerm('loss_x', 1.0, lambda e, b, o: seen.append(o[2]) or F.cross_entropy(o[0], b['pid']))
    engine = TwoStage(NoData(4), model, optimizer, None, use_gpu=False, loss_terms=[term],
                      hooks=[Recording()])
    engine.forward_backward(tiny_batch)
    assert order == ['model_outputs', 'after_forward', 'finish_outputs', ('after_step', 'finished')]
    assert seen == ['finished']


def test_part_logits_stay_whole_for_the_loss_and_give_their_first_part_to_distillation():
    from plugins.nn.modules import logits_of, split_outputs
    parts = [torch.zeros(2, 3), torch.ones(2, 3)]  # a part model's (PCB) training output
    assert logits_of(parts) is parts  # the identification loss supervises every part
    assert split_outputs(parts)[0] is parts[0] and split_outputs(parts)[1] is parts[1]
    logits, features = torch.zeros(2, 3), torch.ones(2, 4)
    assert logits_of((logits, features)) is logits and split_outputs((logits, features))[1] is features
    assert split_outputs(logits) == (logits, None) and logits_of(logits) is logits


@pytest.mark.parametrize('lr_step', ['epoch', 'iteration'])
def test_lr_step_iteration_steps_every_scheduler_before_each_step_and_not_after_the_epoch(
        tiny_batch, lr_step):
    torch.manual_seed(0)
    model = TinyReIDNet(4, 'triplet')
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1, gamma=0.5)
    engine = PluginEngine(NoData(4), model, optimizer, scheduler, use_gpu=False,
                          loss_terms=[ce_term()], lr_step=lr_step)
    class ThreeBatches(list):
        sampler = None
    engine.train_loader = ThreeBatches([tiny_batch] * 3)
    engine.epoch, engine.max_epoch = 0, 1
    engine.train(print_freq=100)
    # 'iteration': halved before each of the 3 steps; 'epoch': once, after the epoch (host)
    assert optimizer.param_groups[0]['lr'] == (0.125 if lr_step == 'iteration' else 0.5)


def test_an_unknown_lr_step_is_refused():
    model = TinyReIDNet(4)
    with pytest.raises(ValueError, match=r"lr_step 'step' is not one of \['epoch', 'iteration'\]"):
        PluginEngine(NoData(4), model, torch.optim.SGD(model.parameters(), lr=0.1), use_gpu=False,
                     lr_step='step')
