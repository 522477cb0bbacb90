"""Hooks: extra update steps around the engine's main step.

A hook sees each training step at four points (see :class:`Hook`). The three
general hooks here cover what the projects need:

* :class:`CriticUpdateHook`: a critic fitted by MSE to rewards, whose value the
  main networks maximise (actor-critic attention, e.g. SCAL);
* :class:`AdversarialStepHook`: one discriminator step per iteration plus the
  generator's adversarial term (GANs, e.g. DG-Net);
* :class:`TeacherDistillationHook`: a frozen teacher loaded from a local
  torchreid checkpoint, adding a KL or feature distillation term.

Networks a hook trains are registered with the engine's ``register_model``, so
checkpointing, train/eval switching, LR stepping and gradient averaging under torchrun cover them;
their steps go through ``engine.optimizer_step`` (mixed precision, non-finite
skipping, gradients averaged over the ranks under torchrun). A frozen teacher is deliberately not registered:
it is never saved.
"""
import contextlib

import torch
import torch.nn.functional as F

from plugins.training.checkpoint import load_weights_strict
from plugins.nn.modules import batchnorm_stats_frozen, frozen, split_outputs
from plugins.training.step import model_output




class Hook:
    """Base hook; every stage is optional.

    Per training step, in order:
      1. ``before_step(engine, batch)``
      2. main forward: ``outputs = engine.model_outputs(batch)``: ``engine.model(batch['img'])``,
         or a method's step object (:class:`plugins.training.step.Step`) holding that output and
         the extras its losses need; every later stage receives this one object
      3. ``after_forward(engine, batch, outputs)``: extra updates that need the
         outputs but must run before the main backward (a discriminator step);
      4. ``outputs = engine.finish_outputs(batch, outputs)``: the rest of the forward, for
         methods that compute it after such an update (DG-Net); unchanged by default;
      5. ``loss_terms(engine, batch, outputs) -> {name: tensor}``: terms added to
         the main loss (already weighted);
      6. main backward and optimizer step;
      7. ``after_step(engine, batch, outputs)``.
    Stages 3 and 7 may return a ``{name: tensor or float}`` dict that is logged;
    return detached tensors (no ``.item()``) so that a step never waits for the device.
    """

    name = 'hook'

    def attach(self, engine):
        """Called once when the engine adds the hook: move networks, register them."""

    def before_step(self, engine, batch):
        return None

    def after_forward(self, engine, batch, outputs):
        return None

    def loss_terms(self, engine, batch, outputs):
        return {}

    def after_step(self, engine, batch, outputs):
        return None

    def state_dict(self):
        """State saved with the engine's main checkpoint (schedules, counters)."""
        return {}

    def load_state_dict(self, state):
        pass


class TrainedNetworkHook(Hook):
    """A hook that trains a network of its own with its own optimiser (a critic, a
    discriminator): registered with the engine as ``name``, so checkpoints, train/eval
    switching, LR stepping and gradient averaging cover it."""

    def __init__(self, network, optimizer, scheduler=None, name='hook'):
        self.network = network
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.name = name

    def attach(self, engine):
        engine.register_model(self.name, self.network, self.optimizer, self.scheduler)


class CriticUpdateHook(TrainedNetworkHook):
    """Fit a critic V to rewards by MSE; the main networks minimise -V with V frozen.

    Args:
        critic (nn.Module): called as ``critic(*inputs)``, returns per-sample values.
        optimizer, scheduler: the critic's own (scheduler may be None).
        inputs_fn: ``(engine, batch, outputs) -> tuple`` of critic inputs, attached to
            the main graph (their detached copies train the critic).
        reward_fn: ``(engine, batch, outputs) -> tensor`` of per-sample rewards
            (treated as constants).
        value_weight (float): weight of the ``-V`` term in the main loss.
        update_first (bool): fit the critic before the main backward (True) or after
            the main step (False).
    """

    def __init__(self, critic, optimizer, reward_fn, inputs_fn, scheduler=None,
                 value_weight=1.0, update_first=False, name='critic'):
        super().__init__(critic, optimizer, scheduler, name)
        self.critic = critic
        self.reward_fn = reward_fn
        self.inputs_fn = inputs_fn
        self.value_weight = value_weight
        self.update_first = update_first

    def _fit(self, engine, batch, outputs):
        inputs = tuple(x.detach() for x in self.inputs_fn(engine, batch, outputs))
        reward = self.reward_fn(engine, batch, outputs).detach().float()
        mse = F.mse_loss(self.critic(*inputs).view(-1).float(), reward.view(-1))
        engine.optimizer_step(self.optimizer, {self.name + '_mse': mse})
        return {self.name + '_mse': mse.detach()}

    def after_forward(self, engine, batch, outputs):
        return self._fit(engine, batch, outputs) if self.update_first else None

    def loss_terms(self, engine, batch, outputs):
        if not self.value_weight:
            return {}
        with frozen(self.critic):
            value = self.critic(*self.inputs_fn(engine, batch, outputs))
        return {self.name + '_value': -self.value_weight * value.mean()}

    def after_step(self, engine, batch, outputs):
        return None if self.update_first else self._fit(engine, batch, outputs)


class AdversarialStepHook(TrainedNetworkHook):
    """One discriminator step per iteration, then the generator's adversarial term.

    Args:
        discriminator (nn.Module), optimizer, scheduler: D and its own optimiser.
        d_loss_fn: ``(discriminator, engine, batch, outputs) -> tensor``; must detach
            the fakes it reads from ``outputs``.
        g_loss_fn: ``(discriminator, engine, batch, outputs) -> tensor`` or None; the
            generator side, computed with D's parameters frozen.
        g_weight (float): weight of the generator term.
    """

    def __init__(self, discriminator, optimizer, d_loss_fn, g_loss_fn=None, scheduler=None,
                 g_weight=1.0, name='discriminator'):
        super().__init__(discriminator, optimizer, scheduler, name)
        self.discriminator = discriminator
        self.d_loss_fn = d_loss_fn
        self.g_loss_fn = g_loss_fn
        self.g_weight = g_weight

    def after_forward(self, engine, batch, outputs):
        d_loss = self.d_loss_fn(self.discriminator, engine, batch, outputs)
        engine.optimizer_step(self.optimizer, {self.name + '_loss': d_loss})
        return {self.name + '_loss': d_loss.detach()}

    def loss_terms(self, engine, batch, outputs):
        if self.g_loss_fn is None or not self.g_weight:
            return {}
        with frozen(self.discriminator):
            g_loss = self.g_loss_fn(self.discriminator, engine, batch, outputs)
        return {self.name + '_adv': self.g_weight * g_loss}


class TeacherDistillationHook(Hook):
    """Distil a frozen teacher into the main model (Hinton et al. 2015 KL, or feature MSE).

    The teacher runs in training mode so that it returns logits, with every Dropout
    in eval mode and its BatchNorm layers either in eval mode (running estimates,
    the default) or normalising with the batch's statistics (``batch_statistics``,
    DG-Net's ``train_bn``); either way its parameters and running estimates never
    change. It is not registered with the engine, so it is never saved with the
    student.

    Args:
        teacher (nn.Module): built with ``loss='triplet'`` so it returns (logits, features).
        weight (float or callable): weight of the term, or ``engine -> weight`` (a warm-up);
            at weight 0 neither the teacher nor the term is computed.
        temperature (float): KL temperature T; the term is scaled by T^2.
        mode (str): 'kl' (logits) or 'feature' (MSE between retrieval features).
        inputs_fn: ``(engine, batch, outputs) -> images`` the teacher sees (default: the batch).
        student_fn: ``(engine, batch, outputs) -> (logits, features)`` of the student
            (default: split the main model's training output).
        flip_average (bool): 'kl' only: the target is the mean of the teacher's
            probabilities on the images and on their mirror images (DG-Net's smooth
            dynamic label, ``teacher_style 0``).
        batch_statistics (bool): BatchNorm uses the batch's statistics (running
            estimates untouched).
        chunk_size (int): the teacher sees the images in chunks of this many (so batch
            statistics are those of the batches the recipe used); 0: all at once.
    """

    MODES = ('kl', 'feature')

    def __init__(self, teacher, weight=1.0, temperature=1.0, mode='kl', inputs_fn=None,
                 student_fn=None, flip_average=False, batch_statistics=False, chunk_size=0,
                 name='teacher'):
        if mode not in self.MODES:
            raise ValueError('Unknown distillation mode {!r}; expected one of {}'.format(
                mode, self.MODES))
        if flip_average and mode != 'kl':
            raise ValueError("flip_average averages the teacher's probabilities: it needs "
                             "mode 'kl', got {!r}".format(mode))
        self.teacher = teacher
        self.weight = weight
        self.temperature = temperature
        self.mode = mode
        self.inputs_fn = inputs_fn or (lambda engine, batch, outputs: batch['img'])
        self.student_fn = student_fn or (
            lambda engine, batch, outputs: split_outputs(model_output(outputs)))
        self.flip_average = flip_average
        self.batch_statistics = batch_statistics
        self.chunk_size = chunk_size
        self.name = name

    @classmethod
    def from_checkpoint(cls, model_name, weights, num_classes, **kwargs):
        """Build ``model_name`` and load a local torchreid checkpoint into it, strictly."""
        from plugins.nn.models import build_model

        teacher = build_model(model_name, num_classes, loss='triplet', pretrained=False)
        try:
            load_weights_strict(teacher, weights)
        except ValueError as err:
            raise ValueError('Teacher model {!r} with {} classes: {}'.format(
                model_name, num_classes, err)) from None
        return cls(teacher, **kwargs)

    def attach(self, engine):
        self.teacher.to(engine.device).train()
        for module in self.teacher.modules():
            if isinstance(module, torch.nn.Dropout) or (
                    isinstance(module, torch.nn.modules.batchnorm._BatchNorm)
                    and not self.batch_statistics):
                module.eval()
        self.teacher.requires_grad_(False)

    def _teacher_outputs(self, images):
        """(logits, features) of the teacher, chunk by chunk, without gradient."""
        chunks = images.split(self.chunk_size) if self.chunk_size else (images,)
        context = batchnorm_stats_frozen if self.batch_statistics else contextlib.nullcontext
        with torch.no_grad(), context(self.teacher):
            outputs = [split_outputs(self.teacher(chunk)) for chunk in chunks]
        logits = torch.cat([o[0] for o in outputs])
        features = torch.cat([o[1] for o in outputs]) if outputs[0][1] is not None else None
        return logits, features

    def target_probabilities(self, images):
        """The teacher's soft labels at temperature T (flip-averaged with ``flip_average``)."""
        probs = F.softmax(self._teacher_outputs(images)[0].float() / self.temperature, dim=1)
        if self.flip_average:
            mirrored = self._teacher_outputs(images.flip(-1))[0].float()
            probs = (probs + F.softmax(mirrored / self.temperature, dim=1)) / 2
        return probs

    def loss_terms(self, engine, batch, outputs):
        weight = self.weight(engine) if callable(self.weight) else self.weight
        if not weight:
            return {}
        images = self.inputs_fn(engine, batch, outputs)
        s_logits, s_feats = self.student_fn(engine, batch, outputs)
        if self.mode == 'kl':
            T = self.temperature
            term = F.kl_div(F.log_softmax(s_logits.float() / T, dim=1), self.target_probabilities(images),
                            reduction='batchmean') * T * T
        else:
            t_feats = self._teacher_outputs(images)[1]
            if s_feats is None or s_feats.shape != t_feats.shape:
                raise ValueError('Feature distillation needs student features shaped like the '
                                 "teacher's {}, got {}".format(tuple(t_feats.shape),
                                                               None if s_feats is None else tuple(s_feats.shape)))
            term = F.mse_loss(s_feats, t_feats)
        return {self.name + '_' + self.mode: weight * term}
