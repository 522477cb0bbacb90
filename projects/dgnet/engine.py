"""The ``dgnet`` engine: DG-Net's joint discriminative and generative training on the plugin loop.

A batch holds ``2n`` (anchor, positive) pairs from ``PairwiseSampler`` with
``pos_ratio 1.0``; the first ``n`` anchors are the official loader a (``x_a``,
their positives ``xp_a``), the last ``n`` loader b. One iteration (official
``dis_update`` then ``gen_update``):

1. codes: structure ``s = E_s(grey x)``; appearance ``f = E_a(x)``, ``fp = E_a(xp)``
   (detached by E_a, so computed without a graph);
2. one decoder pass for self-reconstructions ``G(s, f)``, same-identity
   reconstructions ``G(s, fp)`` and swaps ``x_ba = G(s_b, f_a)``, ``x_ab = G(s_a, f_b)``,
   and E_a on the erased reals (the official ``forward``: :meth:`DGNetEngine.model_outputs`);
3. D step on the detached swaps against the reals (LSGAN + R1), through
   :class:`plugins.AdversarialStepHook`;
4. the rest of the official ``gen_update`` forward (:meth:`DGNetEngine.finish_outputs`),
   after the D step as there, so that D's graph is gone before these are built;
5. one step of E_a (SGD) and E_s + G (Adam) on the weighted sum of every term
   below, the teacher's KL through :class:`plugins.TeacherDistillationHook`.

Faithful to the official maths, faster: G and D see whole batches on a GPU (they
normalise per image, so batching changes nothing; on a CPU they run in groups of at
most :data:`CPU_GROUP` images), the frozen E_a
is the live one with gradients and running statistics switched off instead of a
deep copy per iteration, its pass over the fakes is shared with the student's
(:func:`learning_and_frozen`), and the code passes run without a graph. E_a and the
teacher keep the official batches of ``n`` images per pass (their BatchNorm uses
batch statistics). The official code computes each term for a and for b and adds
them; with equal halves that is :data:`HALVES` times the mean over both.
"""
import contextlib
import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from plugins import (AdversarialStepHook, LossTerm, PluginEngine, Step, TeacherDistillationHook,
                     batchnorm_stats_frozen, build_lr_scheduler, engine_options, frozen,
                     lr_scheduler_kwargs, per_rank_batch)

from .networks import (AppearanceEncoder, Generator, MultiScaleDiscriminator, discriminator_loss,
                       generator_adversarial_loss, r1_penalty)
from .schedules import loss_weights

HALVES = 2  # the official a and b batches: its sums of two equal-size means
# Images per G or D call on a CPU: 8 images of 32 x 256 x 128 floats reach glibc's 32 MiB mmap
# ceiling, above which every allocation is mapped and page-faulted afresh (D's step on 8 images:
# 1.5 s whole, 1.1 s in groups of 2; the official-batch iteration 6% faster with 4 than with 8).
CPU_GROUP = 4



@dataclass
class DGNetStep(Step):
    """One iteration's tensors. :meth:`DGNetEngine.model_outputs` fills them up to the D step:
    ``output`` (E_a's primary logits of the erased reals), ``fine`` (its fine logits of them),
    ``positive_logits`` (primary logits of the erased positives), ``reals`` (x_a, x_b) and their
    ``labels``, the decoder's ``recon`` (G(s, f)), ``recon_positive`` (G(s, fp)) and ``fakes``
    (x_ba, x_ab), and the codes ``structure`` (s) and ``appearance`` (f) of the reals;
    :meth:`DGNetEngine.finish_outputs` after it: ``fake_codes`` and ``fake_logits`` (the fakes
    seen by a frozen E_a) and, while the teacher's terms weigh, ``student`` (E_a's logits of
    the detached fakes). ``structure_again`` (E_s on the fakes) is computed when a term first
    asks for it (:meth:`DGNetEngine.structure_again`), so a zero weight skips it."""

    fine: torch.Tensor
    positive_logits: torch.Tensor
    reals: torch.Tensor
    labels: torch.Tensor
    recon: torch.Tensor
    recon_positive: torch.Tensor
    fakes: torch.Tensor
    structure: torch.Tensor
    appearance: torch.Tensor
    fake_codes: torch.Tensor = None
    fake_logits: torch.Tensor = None
    structure_again: torch.Tensor = None
    student: tuple = None


TERMS = ('recon_x', 'recon_xp', 'recon_s', 'recon_f', 'recon_cyc', 'id', 'pid', 'recon_id', 'fine')


def per_group(fn, inputs, group_size):
    """``fn`` on consecutive groups of ``group_size`` rows of ``inputs`` (a tensor, or a tuple of
    tensors split alike; None: all at once), outputs (or output tuples and lists) concatenated."""
    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    if group_size is None or group_size >= len(inputs[0]):
        return fn(*inputs)
    outputs = [fn(*parts) for parts in zip(*(x.split(group_size) for x in inputs))]
    if isinstance(outputs[0], (tuple, list)):
        return type(outputs[0])(torch.cat(parts) for parts in zip(*outputs))
    return torch.cat(outputs)


def swap_halves(x):
    """(b, a) from (a, b) along the batch."""
    first, second = x.chunk(2)
    return torch.cat([second, first])


@contextlib.contextmanager
def frozen_encoder(module):
    """The official per-iteration copy of E_a (``eval()`` then BatchNorm in train mode),
    without copying: no parameter gradient, dropout off, batch statistics, running
    estimates untouched."""
    dropouts = [m for m in module.modules() if isinstance(m, torch.nn.Dropout) and m.training]
    for m in dropouts:
        m.eval()
    try:
        with frozen(module), batchnorm_stats_frozen(module):
            yield module
    finally:
        for m in dropouts:
            m.train()


def random_erase(images, probability, area=(0.02, 0.4), min_aspect=0.3, attempts=100):
    """Random erasing (Zhong et al.) with fill 0, per image, as the official ``RandomErasing``.

    With ``probability`` an image gets one rectangle of ``area`` (fraction of the
    image) and aspect ratio in ``[min_aspect, 1 / min_aspect]``: the first of
    ``attempts`` draws that fits, as the official retry loop. All draws are made at
    once with torch's CPU generator (so resumes replay them), the boxes go to the
    device through pinned memory, and one mask is applied there: no host loop, no
    synchronisation.
    """
    n, _, height, width = images.shape
    erase = torch.rand(n) <= probability
    target = torch.empty(n, attempts).uniform_(*area) * (height * width)
    aspect = torch.empty(n, attempts).uniform_(min_aspect, 1 / min_aspect)
    h = (target * aspect).sqrt().round().long()
    w = (target / aspect).sqrt().round().long()
    fits = (h < height) & (w < width)
    first = fits.long().argmax(1, keepdim=True)  # the first draw that fits
    found = (fits.any(1) & erase).long()
    h, w = h.gather(1, first)[:, 0] * found, w.gather(1, first)[:, 0] * found  # 0: untouched
    top = (torch.rand(n) * (height - h + 1)).long()  # uniform in [0, height - h]
    left = (torch.rand(n) * (width - w + 1)).long()
    boxes = torch.stack([top, left, h, w], 1)
    if images.device.type == 'cuda':
        boxes = boxes.pin_memory()
    top, left, h, w = boxes.to(images.device, non_blocking=True).unbind(1)
    rows = torch.arange(height, device=images.device)
    cols = torch.arange(width, device=images.device)
    in_rows = (rows >= top[:, None]) & (rows < (top + h)[:, None])
    in_cols = (cols >= left[:, None]) & (cols < (left + w)[:, None])
    return images.masked_fill(in_rows[:, None, :, None] & in_cols[:, None, None, :], 0)


def code_and_primary_logits(encoder, images):
    code, (primary, _) = encoder.encode(images)
    return code, primary


class _TwoGradientRoutes(torch.autograd.Function):
    """One pass of ``network`` on ``x`` returned twice: what flows back into the first output
    reaches only the network's parameters (as if ``x`` were detached), what flows into the
    second only ``x`` (as if the network were frozen). Each route's backward runs over the one
    saved graph, computing only what its route needs."""

    @staticmethod
    def forward(ctx, network, x, *params):
        ctx.set_materialize_grads(False)
        with torch.enable_grad():
            inner_x = x.detach().requires_grad_(x.requires_grad)
            out = network(inner_x)
        ctx.inner, ctx.params = (inner_x, out), params
        return out.detach(), out.detach()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, to_params, to_input):
        (inner_x, out), params = ctx.inner, ctx.params
        to_input = to_input if inner_x.requires_grad else None
        param_grads = [None] * len(params)
        if to_params is not None:
            param_grads = torch.autograd.grad(out, params, to_params, retain_graph=to_input is not None,
                                              allow_unused=True)
        input_grad = None if to_input is None else torch.autograd.grad(out, inner_x, to_input)[0]
        ctx.inner = ctx.params = None
        return (None, input_grad, *param_grads)


def learning_and_frozen(network, x):
    """``(network(x.detach()), frozen network(x))`` from one forward pass: the two passes the
    official step makes over the same images with the same weights and batch statistics
    (E_a learning from the detached fakes, its frozen copy judging them), computed once.
    Running statistics are updated once, by the learning pass."""
    params = [p for p in network.parameters() if p.requires_grad]
    return _TwoGradientRoutes.apply(network, x, *params)


def l1(output, target):
    """The official ``recon_criterion``: mean absolute error to a detached target."""
    return (output - target.detach()).abs().mean()


class DGNetEngine(PluginEngine):
    """:class:`plugins.PluginEngine` training E_a (``model``), the generator and, through
    hooks, D and the teacher term. Every schedule moves per iteration (learning rates
    through the builder's ``lr_step='iteration'``, warm-ups through ``loss_weights``); the iteration is ``epoch * num_batches + batch_idx``, which the
    checkpoints hold, so a resumed run continues with the same weights and rates.
    """

    def __init__(self, datamanager, model, optimizer, scheduler, generator, generator_optimizer,
                 generator_scheduler, dgnet, teacher_weight=1.0, seed=0, **options):
        super().__init__(datamanager, model, optimizer, scheduler, **options)
        self.generator = self.register_model('generator', generator, generator_optimizer,
                                             generator_scheduler)
        self.main_optimizers.append(generator_optimizer)
        self.dgnet = dgnet
        self.teacher_weight = teacher_weight
        self.seed = seed
        self.weights = loss_weights(dgnet, 0, teacher_weight)
        self._group = None  # images per official loader batch (n), set by each step
        self.loss_terms = [LossTerm(name, self._weight_of(name), TERM_FNS[name]) for name in TERMS]

    @staticmethod
    def _weight_of(name):
        return lambda engine: engine.weights[name]

    def per_image(self, fn, inputs):
        """``fn`` (G or D: networks that normalise each image alone) on whole batches on a GPU;
        on a CPU in groups of at most :data:`CPU_GROUP` images."""
        return per_group(fn, inputs, min(self._group, CPU_GROUP) if self.device.type == 'cpu' else None)

    def discriminate(self, discriminator, images):
        """D's patch scores of ``images`` through :meth:`per_image`; on a CPU in channels-last
        memory, oneDNN's native layout, in which D's step runs 10-17% faster (the whole
        iteration 3%; G and E_s gain nothing, E_s loses)."""
        if self.device.type == 'cpu':
            images = images.contiguous(memory_format=torch.channels_last)
        return self.per_image(discriminator, images)

    @property
    def iteration(self):
        """Global 0-based iteration of the current step (the official counter)."""
        return self.epoch * getattr(self, 'num_batches', 0) + self.batch_idx

    def model_outputs(self, batch):
        """The official ``forward``: codes, the decoder's images, E_a on the erased reals."""
        self.weights = loss_weights(self.dgnet, self.iteration, self.teacher_weight)
        images, pids = batch['img'], batch['pid']
        x, xp, labels = images[0::2], images[1::2], pids[0::2]
        n = self._group = len(x) // 2  # one official loader batch
        encoder, gen = self.model, self.generator

        with torch.no_grad():  # appearance codes are detached by E_a: no graph needed
            f, fp = per_group(lambda group: encoder.encode(group)[0], torch.cat([x, xp]), n).chunk(2)
        s = gen.encode(x)
        recon, recon_p, fakes = self.per_image(gen.decode, (torch.cat([s, s, swap_halves(s)]),
                                                            torch.cat([f, fp, f]))).chunk(3)
        # identities of the reals and positives, on randomly erased copies; E_a sees them
        # before the detached fakes, as in the official step (the same order of BatchNorm
        # running-statistics updates)
        primary, fine = per_group(self.model, random_erase(torch.cat([x, xp]), self.dgnet.erasing_p), n)
        logits, logits_p = primary.chunk(2)
        return DGNetStep(logits, fine[:len(x)], logits_p, x, labels, recon, recon_p, fakes, s, f)

    def finish_outputs(self, batch, step):
        """The official ``gen_update``'s forward, after the D step: the fakes judged by a frozen
        E_a (identity of the appearance source) and, while the teacher's terms weigh, E_a
        learning from the detached fakes (the student); the rest is computed by the terms."""
        if self.weights['teacher'] or self.weights['fine']:
            codes, judged, primary, fine = per_group(self._fakes_seen_twice, step.fakes, self._group)
            step.fake_codes, step.fake_logits, step.student = codes, judged, (primary, fine)
        else:
            with frozen_encoder(self.model):
                step.fake_codes, step.fake_logits = per_group(
                    lambda group: code_and_primary_logits(self.model, group), step.fakes, self._group)
        return step

    def _fakes_seen_twice(self, fakes):
        """Code and primary logits of the frozen E_a, then the student's (primary, fine) logits,
        from one trunk pass (:func:`learning_and_frozen`). The official step runs E_a's trunk
        twice on these images, its copy and then itself, alike but for the gradients."""
        encoder = self.model
        learning, frozen_map = learning_and_frozen(encoder.trunk, fakes)
        with frozen_encoder(encoder):
            code, (judged, _) = encoder.read(frozen_map)
        _, student = encoder.read(learning)
        return code, judged, *student

    def structure_again(self, step):
        """Structure codes of (x_ab, x_ba), once per step: with probability
        ``use_encoder_again`` E_s learns on the detached fakes, otherwise a frozen E_s passes
        the gradient to G."""
        if step.structure_again is None:
            fakes = swap_halves(step.fakes)
            encoder = self.generator.structure_encoder
            draw = random.Random(self.seed * 1000003 + self.iteration)  # one per iteration, all ranks
            if draw.random() <= self.dgnet.use_encoder_again:
                step.structure_again = encoder(fakes.detach())
            else:
                with frozen(encoder):
                    step.structure_again = encoder(fakes)
        return step.structure_again

    def student(self, step):
        """E_a's (primary, fine) logits of the detached fakes (the teacher's student and
        fine-grained mining), computed in :meth:`finish_outputs` while their terms weigh."""
        if step.student is None:
            raise RuntimeError('the student logits are computed only while the teacher or '
                               'fine-grained term weighs (dgnet weights: teacher {teacher}, '
                               'fine {fine})'.format(**self.weights))
        return step.student


def _terms():
    """The generator/encoder step's terms, unweighted (paper eqs. 1-7; official ``gen_update``);
    each official term is the sum over a and b, :data:`HALVES` times the mean over both."""
    def identity(engine, batch, step):
        return HALVES * (F.cross_entropy(step.output, step.labels)
                         + engine.weights['id_fine'] * F.cross_entropy(step.fine, step.labels))

    def cycle(engine, batch, step):  # x_aba = G(s_a_recon, f_a_recon), x_bab likewise
        return HALVES * l1(engine.per_image(engine.generator.decode,
                                            (engine.structure_again(step), step.fake_codes)), step.reals)

    return {
        'recon_x': lambda engine, batch, step: HALVES * l1(step.recon, step.reals),
        'recon_xp': lambda engine, batch, step: HALVES * l1(step.recon_positive, step.reals),
        'recon_s': lambda engine, batch, step: HALVES * l1(engine.structure_again(step), step.structure),
        # both codes are detached (as in the official code): logged, no gradient
        'recon_f': lambda engine, batch, step: HALVES * l1(step.fake_codes, step.appearance),
        'recon_cyc': cycle,
        'id': identity,
        'pid': lambda engine, batch, step: HALVES * F.cross_entropy(step.positive_logits, step.labels),
        'recon_id': lambda engine, batch, step: HALVES * F.cross_entropy(step.fake_logits, step.labels),
        # fine-grained mining: the identity of the structure source
        'fine': lambda engine, batch, step: HALVES * F.cross_entropy(engine.student(step)[1],
                                                                     swap_halves(step.labels)),
    }


TERM_FNS = _terms()


def discriminator_step_loss(discriminator, engine, batch, outputs):
    """D's LSGAN loss on the detached fakes against the reals, plus the R1 penalty
    (official ``calc_dis_loss`` for a and b). D sees the fakes and the reals apart, so the
    penalty's double backward runs over the reals alone.

    Under fp16 autocast D runs in fp32 here: the R1 input-gradient is not loss-scaled
    and would underflow in half precision.
    """
    precision = engine.precision
    with precision.full_precision() if precision.mode == 'fp16' else contextlib.nullcontext():
        reals = outputs.reals.detach().float().requires_grad_()
        fake_scores = engine.discriminate(discriminator, outputs.fakes.detach().float())
        real_scores = engine.discriminate(discriminator, reals)
        dgnet = engine.dgnet
        return HALVES * dgnet.gan_w * (discriminator_loss(fake_scores, real_scores)
                                       + dgnet.r1_w * r1_penalty(real_scores, reals))


def generator_step_loss(discriminator, engine, batch, outputs):
    """The generator's LSGAN term for x_ba and x_ab (official ``calc_gen_loss``)."""
    return HALVES * generator_adversarial_loss(engine.discriminate(discriminator, outputs.fakes))


def real_accuracy(engine, batch, outputs):
    """Top-1 accuracy (percent) of E_a's primary head on the erased real images."""
    return (outputs.output.argmax(1) == outputs.labels).float().mean() * 100


def check_config(cfg):
    """What a ``dgnet`` config must hold (registered with the config node: checked when a config
    is read, also by the inference tools); the teacher's weights are asked for when training
    starts (:func:`build_dgnet_engine`)."""
    if (cfg.engine.name or cfg.loss.name) != 'dgnet':
        return
    if cfg.sampler.train_sampler != 'PairwiseSampler' or cfg.sampler.pos_ratio != 1.0:
        raise ValueError("engine 'dgnet' needs (image, positive) pairs: sampler.train_sampler "
                         "'PairwiseSampler' with sampler.pos_ratio 1.0, got {!r} with pos_ratio {}".format(
                             cfg.sampler.train_sampler, cfg.sampler.pos_ratio))
    per_rank = per_rank_batch(cfg.train.batch_size)
    if per_rank % 4 or per_rank < 8:
        raise ValueError("engine 'dgnet' needs a batch of (image, positive) pairs split into two "
                         'halves of at least 2 pairs each: train.batch_size per process must be a '
                         'multiple of 4, at least 8, got {}'.format(per_rank))
    if cfg.teacher.mode != 'kl':
        raise ValueError("DG-Net's primary feature learning distils the teacher's soft labels: "
                         "teacher.mode must be 'kl', got {!r}".format(cfg.teacher.mode))


def build_dgnet_engine(cfg, datamanager, model, optimizer, scheduler):
    """Engine builder registered as ``dgnet`` (called by ``plugins.build_engine``).

    E_a is the run's model with the host's optimiser (the configs: SGD, Nesterov,
    staged LR 0.002 trunk / 0.02 heads); E_s + G and D get Adam with ``dgnet.lr_g``
    / ``dgnet.lr_d``; all three follow ``train.lr_scheduler`` stepped per iteration.
    """
    if not isinstance(model, AppearanceEncoder):
        raise TypeError("engine 'dgnet' needs the model dgnet_resnet50, got {}".format(
            type(model).__name__))
    if cfg.dgnet.use_teacher and not cfg.teacher.weights:
        raise ValueError(
            "DG-Net's primary feature learning needs a teacher: train one first, e.g. "
            'python tools/train.py --config-file configs/baselines/resnet50_softmax_market1501.yaml, '
            'then pass teacher.weights <its model.pth.tar-N> (teacher.model names its architecture); '
            'or set dgnet.use_teacher False to train without it')
    d = cfg.dgnet

    def adam(network, lr):
        optim = torch.optim.Adam(network.parameters(), lr=lr, betas=(d.beta1, d.beta2),
                                 weight_decay=cfg.train.weight_decay)
        return optim, build_lr_scheduler(optim, **lr_scheduler_kwargs(cfg))

    generator = Generator()
    engine = DGNetEngine(datamanager, model, optimizer, scheduler, generator, *adam(generator, d.lr_g),
                         dgnet=d, teacher_weight=cfg.teacher.weight, seed=cfg.train.seed,
                         lr_step='iteration', **engine_options(cfg),
                         metric_fns={'acc': real_accuracy})
    discriminator = MultiScaleDiscriminator()
    d_optimizer, d_scheduler = adam(discriminator, d.lr_d)
    engine.add_hook(AdversarialStepHook(discriminator, d_optimizer, discriminator_step_loss,
                                        generator_step_loss, scheduler=d_scheduler, g_weight=d.gan_w))
    if d.use_teacher:
        n = per_rank_batch(cfg.train.batch_size) // 4
        engine.add_hook(TeacherDistillationHook.from_checkpoint(
            cfg.teacher.model, cfg.teacher.weights, datamanager.num_train_pids,
            weight=lambda e: HALVES * e.weights['teacher'], temperature=cfg.teacher.temperature,
            inputs_fn=lambda e, batch, outputs: outputs.fakes.detach(),
            student_fn=lambda e, batch, outputs: (e.student(outputs)[0], None),
            flip_average=True, batch_statistics=True, chunk_size=n))
    return engine
