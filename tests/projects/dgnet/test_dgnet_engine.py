"""The ``dgnet`` engine on a tiny generated dataset: which step trains what, the teacher, the
schedules across a resume, a falling reconstruction loss, mixed precision and torchrun."""
import copy
import os

import pytest
import torch

import plugins
from plugins.training.checkpoint import save_checkpoint
from plugins.nn.modules import batchnorm_stats_frozen
from plugins.training.hooks import AdversarialStepHook, TeacherDistillationHook
from projects.dgnet.engine import frozen_encoder, learning_and_frozen, random_erase
from projects.dgnet.networks import AppearanceEncoder

from tests.helpers import (CUDA, REPO, TINY_SYNTHREID, amp_step, changed, ddp_rank_checksums,
                            load_tool, run_benchmark_section, snapshot, tiny_synthreid_run)

CONFIG = os.path.join(REPO, 'configs', 'dgnet', 'dgnet_resnet50_synthreid.yaml')
NUM_IDS = 6  # TINY_SYNTHREID's training identities
SIZE = ('data.height', '80', 'data.width', '40')  # E_s needs at least 37 pixels a side
ALL_TERMS_ON = ('dgnet.warm_iter', '0', 'dgnet.warm_teacher_iter', '0', 'dgnet.warm_scale', '1.0')


@pytest.fixture(scope='module')
def teacher_weights(tmp_path_factory):
    teacher = plugins.build_model('resnet50', NUM_IDS, loss='softmax', pretrained=False)
    folder = tmp_path_factory.mktemp('teacher')
    save_checkpoint({'state_dict': teacher.state_dict()}, str(folder), name='model.pth.tar-1')
    return str(folder / 'model.pth.tar-1')


def dgnet_run(tmp_path, teacher_weights, *opts):
    torch.set_num_threads(2)
    return tiny_synthreid_run(CONFIG, tmp_path, *SIZE, 'teacher.weights', teacher_weights, *opts)


def first_batch(engine):
    return next(iter(engine.train_loader))


def full_step(engine, data):
    """The whole forward of an iteration (without the D step between its two stages) and its
    unweighted terms, each computed as the engine does: only where its weight is not zero.
    Returns (step, {name: loss})."""
    batch = engine.parse_batch(data)
    step = engine.finish_outputs(batch, engine.model_outputs(batch))
    return step, {t.name: t.fn(engine, batch, step) for t in engine.loss_terms if t.weight(engine)}


def hook(engine, cls):
    return next(h for h in engine.hooks if isinstance(h, cls))


def test_one_iteration_has_every_term_and_the_official_shapes(tmp_path, teacher_weights):
    engine = dgnet_run(tmp_path, teacher_weights, *ALL_TERMS_ON)
    engine.batch_idx = 2  # past the (zero-length) warm-up: every term on
    data = first_batch(engine)
    assert torch.equal(data['pid'][0::2], data['pid'][1::2])  # (image, positive) pairs
    engine.set_model_mode('train')
    step, losses = full_step(engine, data)
    assert step.reals.shape == step.fakes.shape == (4, 3, 80, 40)  # x_a, x_b; x_ba, x_ab
    assert step.output.shape == (4, NUM_IDS)
    assert step.student[0].shape == step.student[1].shape == (4, NUM_IDS)
    every_term = {'recon_x', 'recon_xp', 'recon_s', 'recon_f', 'recon_cyc', 'id', 'pid', 'recon_id',
                  'fine'}
    assert set(losses) == every_term
    log = engine.forward_backward(data)
    assert every_term <= set(log)
    assert {'teacher_kl', 'discriminator_loss', 'discriminator_adv', 'acc'} <= set(log)
    assert all(torch.isfinite(torch.as_tensor(v)) for v in log.values()), log
    assert set(engine.get_model_names()) == {'model', 'generator', 'discriminator'}  # no teacher


def test_before_the_warm_up_the_teacher_and_cycle_terms_are_not_computed(tmp_path, teacher_weights):
    engine = dgnet_run(tmp_path, teacher_weights)  # warm-ups start after 60 iterations
    engine.set_model_mode('train')
    data = first_batch(engine)
    step, losses = full_step(engine, data)
    assert set(losses) == {'recon_x', 'recon_xp', 'id', 'pid', 'recon_id'}
    assert step.student is None and step.structure_again is None  # never computed
    with pytest.raises(RuntimeError, match='only while the teacher or fine-grained term weighs'):
        engine.student(step)
    # only the frozen E_a sees the fakes: their pass leaves the running statistics alone
    assert trunk_passes(engine) == [(False, True)] * 8 + [(True, False)] * 2
    # the fine-grained head is in the 'id' term at weight 0 (official weight_B): zero gradients,
    # so SGD's weight decay still shrinks it, as in the official run's first 30k iterations
    engine.model.zero_grad(set_to_none=True)
    losses['id'].backward()
    fine = engine.model.fine.classifier.weight
    assert fine.grad is not None and not fine.grad.any()


def test_the_d_step_trains_only_d_and_the_main_step_no_d_weight(tmp_path, teacher_weights):
    engine = dgnet_run(tmp_path, teacher_weights, *ALL_TERMS_ON)
    engine.batch_idx = 2
    engine.set_model_mode('train')
    networks = {name: engine._models[name] for name in engine.get_model_names()}
    batch = engine.parse_batch(first_batch(engine))
    outputs = engine.model_outputs(batch)
    before = {name: snapshot(net) for name, net in networks.items()}
    hook(engine, AdversarialStepHook).after_forward(engine, batch, outputs)
    assert changed(before['discriminator'], networks['discriminator'])
    assert not changed(before['model'], networks['model'])
    assert not changed(before['generator'], networks['generator'])

    outputs = engine.finish_outputs(batch, outputs)
    before = {name: snapshot(net) for name, net in networks.items()}
    terms = {t.name: t.weight(engine) * t.fn(engine, batch, outputs) for t in engine.loss_terms}
    for h in engine.hooks:
        terms.update(h.loss_terms(engine, batch, outputs))
    engine.optimizer_step(engine.main_optimizers, terms)
    assert not changed(before['discriminator'], networks['discriminator'])
    assert changed(before['model'], networks['model'])
    assert changed(before['generator'], networks['generator'])


def test_generator_terms_never_reach_the_appearance_encoder(tmp_path, teacher_weights):
    """E_a's code is detached and the frozen E_a that judges the fakes passes gradients only to
    the generator: reconstruction and recon_id train E_s + G alone, identity terms E_a alone."""
    engine = dgnet_run(tmp_path, teacher_weights, *ALL_TERMS_ON)
    engine.batch_idx = 2
    engine.set_model_mode('train')
    for name, reaches_encoder in [('recon_x', False), ('recon_id', False), ('recon_cyc', False),
                                  ('id', True), ('fine', True)]:
        torch.manual_seed(0)
        step, losses = full_step(engine, first_batch(engine))
        for net in (engine.model, engine.generator):
            net.zero_grad(set_to_none=True)
        losses[name].backward()
        encoder_grads = [p.grad for p in engine.model.parameters() if p.grad is not None]
        generator_grads = [p.grad for p in engine.generator.parameters() if p.grad is not None]
        assert bool(encoder_grads) == reaches_encoder, name
        assert bool(generator_grads) != reaches_encoder, name


def test_the_teacher_is_frozen_flip_averaged_and_never_saved(tmp_path, teacher_weights):
    engine = dgnet_run(tmp_path, teacher_weights, *ALL_TERMS_ON, 'train.max_epoch', '1')
    teacher_hook = hook(engine, TeacherDistillationHook)
    teacher = teacher_hook.teacher
    assert teacher_hook.flip_average and teacher_hook.batch_statistics and teacher_hook.chunk_size == 2
    before = snapshot(teacher)
    engine.run(save_dir=str(tmp_path / 'log'), max_epoch=1, print_freq=100)
    assert not changed(before, teacher)
    saved = {f for f in os.listdir(tmp_path / 'log') if not f.startswith('events')}
    assert saved == {'discriminator', 'generator', 'model', 'metrics.jsonl'}
    # soft labels: the mean of the probabilities on the images and on their mirror images
    images = torch.randn(4, 3, 80, 40)
    target = teacher_hook.target_probabilities(images)
    with torch.no_grad(), batchnorm_stats_frozen(teacher):
        direct = sum(torch.softmax(torch.cat([teacher(part)[0] for part in view.split(2)]), 1)
                     for view in (images, images.flip(-1))) / 2
    assert torch.allclose(target, direct, atol=1e-6)
    assert not changed(before, teacher)


def test_schedules_step_per_iteration_and_continue_after_a_resume(tmp_path, teacher_weights):
    """LR x0.1 at iteration 5 (stepsize [5]) for E_a, G and D; warm-up from iteration 3 by 0.1 per
    iteration. A run resumed from its epoch-1 checkpoint has the rates and weights the
    uninterrupted run had at that iteration."""
    opts = ('train.stepsize', '[5]', 'dgnet.warm_iter', '3', 'dgnet.warm_teacher_iter', '3',
            'dgnet.warm_scale', '0.1', 'train.max_epoch', '1')
    engine = dgnet_run(tmp_path, teacher_weights, *opts)
    engine.run(save_dir=str(tmp_path / 'log'), max_epoch=1, print_freq=100)
    done = engine.num_batches
    assert done > 5
    lrs = {name: [g['lr'] for g in engine._optims[name].param_groups] for name in engine.get_model_names()}
    assert lrs['model'] == pytest.approx([1e-4])  # Adam 1e-3 after the drop
    assert lrs['generator'] == lrs['discriminator'] == pytest.approx([1e-4])

    resumed = dgnet_run(tmp_path / 'again', teacher_weights, *opts, 'data.root', str(tmp_path / 'data'),
                        'model.resume', str(tmp_path / 'log' / 'model' / 'model.pth.tar-1'))
    assert {name: [g['lr'] for g in resumed._optims[name].param_groups]
            for name in resumed.get_model_names()} == lrs
    assert {name: s.last_epoch for name, s in resumed._scheds.items()} == {
        name: done for name in ('model', 'generator', 'discriminator')}
    resumed.epoch, resumed.num_batches, resumed.batch_idx = 1, done, 0
    assert resumed.iteration == done
    resumed.set_model_mode('train')
    resumed.model_outputs(resumed.parse_batch(first_batch(resumed)))
    assert resumed.weights['recon_cyc'] == pytest.approx(min(2.0, (done - 3) * 0.1))
    assert resumed.weights['teacher'] == pytest.approx(min(2.0, (done - 3) * 0.1))


def test_self_reconstruction_falls_over_a_short_run(tmp_path, teacher_weights):
    """E_s + G learn to reconstruct (the adversarial and identity-of-fakes terms, which pull
    elsewhere early on, switched off): the L1 of G(s, f) against x falls on a fixed batch.
    Adam with beta1 0 (official) makes single steps noisy, so means of 8 steps are compared."""
    engine = dgnet_run(tmp_path, teacher_weights, 'dgnet.gan_w', '0', 'dgnet.recon_id_w', '0',
                       'dgnet.recon_xp_w', '0')
    engine.set_model_mode('train')
    data = first_batch(engine)
    losses = []
    for i in range(40):
        engine.batch_idx = i
        losses.append(float(engine.forward_backward(data)['recon_x']))
    assert sum(losses[-8:]) < 0.75 * sum(losses[:8]), [round(v, 2) for v in losses]


def test_bf16_autocast_step(tmp_path, teacher_weights):
    engine = dgnet_run(tmp_path, teacher_weights, *ALL_TERMS_ON, 'train.amp', 'bf16')
    engine.batch_idx = 2
    log = amp_step(engine, first_batch(engine))
    assert 'teacher_kl' in log and 'recon_cyc' in log


def test_fp16_discriminator_step_runs_in_fp32(tmp_path, teacher_weights):
    """D's step (and its R1 input-gradient, which no loss scale protects) leaves fp16 autocast:
    D trains from the first step, while the joint E_a + G scaler may still be backing off."""
    engine = dgnet_run(tmp_path, teacher_weights, *ALL_TERMS_ON, 'train.amp', 'fp16')
    engine.batch_idx = 2
    engine.set_model_mode('train')
    d_before = snapshot(engine._models['discriminator'])
    log = engine.forward_backward(first_batch(engine))
    assert all(torch.isfinite(torch.as_tensor(v)).all() for v in log.values()), log
    assert log['discriminator_loss'].dtype == torch.float32
    assert changed(d_before, engine._models['discriminator'])


@pytest.mark.parametrize('opts, message', [
    (('sampler.train_sampler', 'PKSampler'), "sampler.train_sampler 'PairwiseSampler'"),
    (('sampler.pos_ratio', '0.5'), 'pos_ratio 1.0'),
    (('train.batch_size', '6'), 'multiple of 4, at least 8'),
    (('teacher.weights', ''), 'teacher.weights'),
    (('teacher.mode', 'feature'), "teacher.mode must be 'kl'"),
    (('model.name', 'resnet50'), 'needs the model dgnet_resnet50'),
])
def test_bad_configs_are_refused_with_the_key_to_fix(tmp_path, teacher_weights, opts, message):
    with pytest.raises((ValueError, TypeError), match=message.replace('.', r'\.').replace('(', r'\(')):
        dgnet_run(tmp_path, teacher_weights, *opts)


def test_a_missing_teacher_file_is_named(tmp_path, teacher_weights):
    with pytest.raises(FileNotFoundError, match='nowhere.pth.tar'):
        dgnet_run(tmp_path, str(tmp_path / 'nowhere.pth.tar'))


def test_without_a_teacher_the_fine_head_still_warms_up(tmp_path, teacher_weights):
    engine = dgnet_run(tmp_path, '', *ALL_TERMS_ON, 'dgnet.use_teacher', 'False')
    assert not any(isinstance(h, TeacherDistillationHook) for h in engine.hooks)
    engine.batch_idx = 2
    engine.set_model_mode('train')
    step, losses = full_step(engine, first_batch(engine))
    assert engine.weights['id_fine'] > 0 and engine.weights['fine'] == engine.weights['teacher'] == 0
    assert 'fine' not in losses and step.student is None


def test_random_erasing_fills_one_rectangle_with_zeros():
    torch.manual_seed(0)
    images = torch.rand(64, 3, 80, 40) + 1  # no zeros of their own
    assert torch.equal(random_erase(images, 0.0), images)
    erased = random_erase(images, 1.0)
    zero = (erased == 0).all(1)  # (N, H, W)
    assert zero.flatten(1).any(1).all()  # every image got its rectangle
    for mask in zero:
        rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
        assert mask[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()  # one rectangle
        assert 0.02 * 0.5 <= mask.float().mean() <= 0.4 * 1.1  # official area range (rounded sides)
    half = (random_erase(images, 0.5) == 0).all(1).flatten(1).any(1).float().mean()
    assert 0.3 < half < 0.7


def test_ranks_stay_identical_under_torchrun(tmp_path, teacher_weights):
    """E_a and the generator run several times per step, with every term and the teacher
    on: the averaged gradients must keep both ranks' weights the same."""
    sums = ddp_rank_checksums(CONFIG, tmp_path, *TINY_SYNTHREID, *SIZE, *ALL_TERMS_ON,
                              'train.batch_size', '16', 'teacher.weights', teacher_weights)
    assert {net for _, net in sums} == {'model', 'generator', 'discriminator'}
    for name, (rank0, rank1) in sums.items():
        assert rank0 == pytest.approx(rank1, rel=1e-9, abs=1e-6), name


def test_appearance_encoder_is_the_registered_reid_model():
    model = plugins.build_model('dgnet_resnet50', NUM_IDS, pretrained=False)
    assert isinstance(model, AppearanceEncoder)
    model.eval()
    assert model(torch.randn(2, 3, 80, 40)).shape == (2, 1024)


def test_swap_grid_png_from_a_checkpoint(tmp_path, teacher_weights):
    """``tools/visualize.py swap`` draws G(E_s(row image), E_a(column image)) from the saved
    E_a and generator; without the generator next to E_a it names the file it looked for."""
    from PIL import Image

    engine = dgnet_run(tmp_path, teacher_weights)
    engine.save_model(0, 0.0, str(tmp_path / 'log'))
    weights = str(tmp_path / 'log' / 'model' / 'model.pth.tar-1')
    visualize = load_tool('visualize')
    args = ['swap', '--config-file', CONFIG, '--weights', weights, '--root', str(tmp_path / 'data'),
            '--num-images', '3', '--output', str(tmp_path / 'swap'), *TINY_SYNTHREID, *SIZE,
            'data.workers', '0', 'use_gpu', 'False']
    visualize.main(args)
    grid = Image.open(tmp_path / 'swap' / 'swap_dgnet_resnet50.png')
    assert grid.width > 3 * 4 * 20 and grid.height > 4 * 40  # 4 x 4 cells of 64x32 + titles

    from projects.dgnet.swap import appearance_swap
    images = torch.randn(3, 3, 80, 40)
    swapped = appearance_swap(engine.model, weights, images, images[:2])
    assert swapped.shape == (3, 2, 3, 80, 40)
    generator = engine.generator.eval()
    with torch.no_grad():
        expected = generator.decode(generator.encode(images[2:3]),
                                    engine.model.eval().encode(images[1:2])[0])
    assert torch.allclose(swapped[2, 1], expected[0], atol=1e-5)

    os.remove(tmp_path / 'log' / 'generator' / 'model.pth.tar-1')
    with pytest.raises(SystemExit, match='generator'):
        visualize.main(args)


def test_benchmark_section_times_a_full_iteration(tmp_path):
    result, md = run_benchmark_section('dgnet', tmp_path)
    run = result['runs']['fp32']
    assert run['dgnet_s'] > 0 and run['resnet50_s'] > 0
    assert run['ratio'] == pytest.approx(run['dgnet_s'] / run['resnet50_s'])
    assert '## dgnet' in md and '| fp32 |' in md


def trunk_passes(engine):
    """One step's forward (:func:`full_step`) and, for each pass of E_a's trunk in order,
    (whether it ran on the fakes, whether it updated BatchNorm running statistics)."""
    trunk = engine.model.trunk
    norm = next(m for m in trunk.modules() if isinstance(m, torch.nn.BatchNorm2d))
    passes = []
    handle = trunk.register_forward_pre_hook(
        lambda m, args: passes.append((args[0].untyped_storage().data_ptr(), norm.momentum > 0)))
    try:
        step, _ = full_step(engine, first_batch(engine))
    finally:
        handle.remove()
    fakes = step.fakes.untyped_storage().data_ptr()
    return [(ptr == fakes, updates) for ptr, updates in passes]


def test_e_a_sees_the_erased_reals_before_the_fakes(tmp_path, teacher_weights):
    """The official step's order of E_a's passes that update its BatchNorm running statistics:
    the clean and the erased real images (4 loader batches each), then the fakes of the
    teacher phase, whose frozen and learning passes share one trunk pass."""
    engine = dgnet_run(tmp_path, teacher_weights, *ALL_TERMS_ON)
    engine.batch_idx = 2  # every term on, the student pass included
    engine.set_model_mode('train')
    assert trunk_passes(engine) == [(False, True)] * 8 + [(True, True)] * 2


def test_on_a_cpu_g_and_d_see_groups_of_n_images_d_in_channels_last_and_neither_changes_anything(
        tmp_path, teacher_weights):
    """G and D normalise each image alone: on a CPU they run on the official n images at a time
    (larger activations are mapped and page-faulted afresh by glibc), D in channels-last
    memory (oneDNN's layout), with the same results as whole NCHW batches elsewhere."""
    from projects.dgnet.engine import discriminator_step_loss, generator_step_loss
    engine = dgnet_run(tmp_path, teacher_weights, *ALL_TERMS_ON)
    engine.batch_idx = 2
    engine.set_model_mode('train')
    discriminator = hook(engine, AdversarialStepHook).discriminator
    batch = engine.parse_batch(first_batch(engine))

    def seen_by(module, fn):
        """fn(), and the (size, channels-last) of every input ``module`` saw."""
        seen = []
        handle = module.register_forward_hook(lambda m, args, out: seen.append(
            (len(args[0]), args[0].is_contiguous(memory_format=torch.channels_last))))
        try:
            return fn(), seen
        finally:
            handle.remove()

    outputs, seen = seen_by(engine.generator.decoder, lambda: engine.model_outputs(batch))
    assert engine._group == 2 and seen and set(seen) == {(2, False)}

    def d_losses():
        return seen_by(discriminator, lambda: [fn(discriminator, engine, batch, outputs)
                                               for fn in (discriminator_step_loss, generator_step_loss)])

    grouped, seen = d_losses()
    assert seen and set(seen) == {(2, True)}
    engine.device = torch.device('meta')  # not a CPU: whole batches, NCHW
    whole, seen = d_losses()
    assert set(seen) == {(len(outputs.fakes), False)}
    for a, b in zip(grouped, whole):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize('device', ['cpu', CUDA])
def test_one_trunk_pass_gives_the_learning_and_the_frozen_gradients(device):
    """:func:`learning_and_frozen`: y = w x once; the first output's gradient reaches only w
    (dy/dw = x), the second's only x (dy/dx = w); then a BatchNorm network against the two
    official passes (the network on detached inputs; its frozen copy on the inputs)."""
    torch.set_default_device(device)
    try:
        _check_two_gradient_routes()
    finally:
        torch.set_default_device(None)


def _check_two_gradient_routes():
    w, x = torch.tensor(3.0, requires_grad=True), torch.tensor(2.0, requires_grad=True)

    class Scale(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(w.detach().clone())

        def forward(self, inputs):
            return self.w * inputs

    scale = Scale()
    learning, frozen = learning_and_frozen(scale, x * 1)
    learning.backward()
    assert scale.w.grad.item() == 2.0 and x.grad is None
    learning, frozen = learning_and_frozen(scale, x * 1)
    (5 * frozen).backward()
    assert scale.w.grad.item() == 2.0 and x.grad.item() == 15.0

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                              torch.nn.Conv2d(4, 2, 1))
    reference = copy.deepcopy(net)
    images = torch.randn(3, 3, 6, 5, requires_grad=True)
    target_a, target_b = torch.randn(3, 2, 4, 3), torch.randn(3, 2, 4, 3)

    def loss(learning, frozen):
        return ((learning - target_a) ** 2).sum() + (frozen * target_b).sum()

    with frozen_encoder(reference):
        frozen_ref = reference(images)
    loss(reference(images.detach()), frozen_ref).backward()
    expected_input_grad, images.grad = images.grad, None
    loss(*learning_and_frozen(net, images)).backward()
    torch.testing.assert_close(images.grad, expected_input_grad)
    for ours, official in zip(net.parameters(), reference.parameters()):
        torch.testing.assert_close(ours.grad, official.grad)
    for ours, official in zip(net.buffers(), reference.buffers()):  # one running-statistics update
        torch.testing.assert_close(ours, official)
