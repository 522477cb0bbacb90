"""The ``scal`` engine: the plugin loop with SCAL's rewards and the critic-update hook.

One training step (paper Sec. 3.3):

1. forward with attention: logits (and pooled feature), the five attention maps;
2. the same network **without attention** (every agent's output replaced by 1),
   under ``no_grad`` with batch statistics and untouched BN running estimates:
   the reference for the amelioration reward; it reuses the stem's output (the
   first agent comes after the stem), in the same ``model(...)`` call;
3. rewards per image, constants (eqs. 4-6): ``R_c = 1`` if the attention-based
   prediction is right, ``R_a = 1`` if attention raised the true-class
   probability, ``R = R_c + R_a``;
4. main loss: the ReID terms (label-smoothed CE, plus batch-hard triplet with
   ``loss.name 'triplet'``) and ``J_cri = -V`` weighted by ``scal.value_weight``,
   with the critic frozen (:class:`plugins.CriticUpdateHook`). As the paper writes
   ``J_cri(theta)`` with the state ``X = F(I; psi)``, its gradient is the actor's
   of deterministic policy gradients, ``dV/dA dA/dtheta`` with every agent's
   input held fixed: it reaches the agents' parameters alone
   (``scal.value_reach 'agents'``); ``'network'`` lets it flow through the
   states into the trunk and earlier agents too;
5. the critic's own step on ``J_mse = (V - R)^2`` with detached inputs, after the
   main step (or before the main backward with ``scal.critic_first``).

Logged: ``loss_x`` (``loss_t``), ``critic_value`` (= -value_weight * mean V),
``critic_mse``, ``acc``, ``reward``, ``reward_c``, ``reward_a``.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from plugins import (CriticUpdateHook, PluginEngine, Step, accuracy, engine_options, logits_of,
                     reid_loss_terms)

from .model import Critic, critic_state


@dataclass
class SCALStep(Step):
    """One step: the model's ``output``, the agents' ``attention`` maps and their input
    ``states``, and the rewards ``reward`` = ``reward_c`` + ``reward_a`` per image."""

    attention: list
    states: list
    reward: torch.Tensor
    reward_c: torch.Tensor
    reward_a: torch.Tensor


def rewards(logits, logits_without_attention, pids):
    """``(R, R_c, R_a)`` per image, as floats (paper eqs. 4-6); no gradient.

    ``R_c``: the attention-based prediction (argmax of ``logits``) is the label.
    ``R_a``: the true-class probability with attention exceeds the one without.
    """
    with torch.no_grad():
        r_c = (logits.argmax(1) == pids).float()
        rows = torch.arange(len(pids), device=pids.device)
        p_att = F.softmax(logits.float(), 1)[rows, pids]
        p_plain = F.softmax(logits_without_attention.float(), 1)[rows, pids]
        r_a = (p_att > p_plain).float()
    return r_c + r_a, r_c, r_a


class SCALEngine(PluginEngine):
    """:class:`plugins.PluginEngine` whose forward also yields attention maps and rewards."""

    def model_outputs(self, batch):
        outputs, attention, states, plain = self.model(batch['img'], return_attention=True,
                                                       with_reference=True)
        reward, r_c, r_a = rewards(logits_of(outputs), logits_of(plain), batch['pid'])
        return SCALStep(outputs, attention, states, reward, r_c, r_a)


def critic_inputs(engine, batch, outputs):
    """``(X, A_1..A_5)`` in the graph: J_cri's gradient reaches whatever produced them."""
    return (critic_state(outputs.states), *outputs.attention)


def critic_inputs_for_the_agents(engine, batch, outputs):
    """``(X, A_1..A_5)`` with X and each agent's input detached, the attention recomputed
    from them: J_cri's gradient reaches the agents' parameters only."""
    states = [x.detach() for x in outputs.states]
    return (critic_state(states), *(agent(x) for agent, x in zip(engine.model.agents, states)))


def step_reward(engine, batch, outputs):
    return outputs.reward


def _mean_of(field):
    return lambda engine, batch, outputs: getattr(outputs, field).mean()


VALUE_REACHES = ('agents', 'network')


def build_scal_engine(cfg, datamanager, model, optimizer, scheduler):
    """Engine builder registered as ``scal`` (called by ``plugins.build_engine``)."""
    net = model
    if not hasattr(net, 'agents'):
        raise TypeError("engine 'scal' needs a SCAL model (scal_spatial_resnet50, "
                        'scal_channel_resnet50), got {}'.format(type(net).__name__))
    if cfg.scal.value_reach not in VALUE_REACHES:
        raise ValueError('scal.value_reach {!r} is not one of {}: what J_cri = -V trains'.format(
            cfg.scal.value_reach, list(VALUE_REACHES)))
    engine = SCALEngine(datamanager, model, optimizer, scheduler, **engine_options(cfg),
                        metric_fns={'acc': accuracy, 'reward': _mean_of('reward'),
                                    'reward_c': _mean_of('reward_c'),
                                    'reward_a': _mean_of('reward_a')})
    engine.loss_terms = reid_loss_terms(cfg, engine)
    critic = Critic(net.trunk.out_channels, net.attention_dims, cfg.scal.critic_hidden)
    critic_optimizer = torch.optim.Adam(critic.parameters(), lr=cfg.scal.critic_lr)
    inputs_fn = critic_inputs_for_the_agents if cfg.scal.value_reach == 'agents' else critic_inputs
    engine.add_hook(CriticUpdateHook(critic, critic_optimizer, step_reward, inputs_fn,
                                     value_weight=cfg.scal.value_weight,
                                     update_first=cfg.scal.critic_first))
    return engine
