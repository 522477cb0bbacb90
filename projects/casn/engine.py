"""The ``casn`` engine: the plugin loop with CASN's four loss terms.

Batches come from the plugin layer's ``PairwiseSampler``: images ``2i`` and
``2i + 1`` form pair i (positive at ``sampler.pos_ratio``). One step:

* ``loss_id``: label-smoothed cross-entropy of the identification head (averaged
  over PCB's parts, torchreid's ``DeepSupervision``);
* ``loss_ia`` (``casn.weight_ia``): identification attention loss
  (:func:`~projects.casn.attention.identification_attention_loss`);
* ``loss_ver`` (``casn.weight_ver``): binary cross-entropy of the verification head
  on every pair;
* ``loss_sa`` (``casn.weight_sa``): Siamese attention consistency on the positive
  pairs (:func:`~projects.casn.attention.siamese_attention_loss`).

L = L_id + w_ia L_ia + w_ver L_ver + w_sa L_sa (paper eq. 7); a zero weight skips
a term's computation. Also logged: ``acc`` and ``positive_pairs``.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from plugins import (LossTerm, PluginEngine, Step, accuracy, cross_entropy_term, engine_options,
                     logits_of, pair_labels)

from .attention import identification_attention_loss, siamese_attention_loss


@dataclass
class CASNStep(Step):
    """One step: the identification logits as ``output`` (a list of part logits for PCB), the
    last conv ``maps`` (kept in the graph for the attention losses) and the ``siamese``
    embeddings of the verification head."""

    maps: torch.Tensor
    siamese: torch.Tensor


class CASNEngine(PluginEngine):
    """:class:`plugins.PluginEngine` whose forward keeps the conv maps and Siamese embeddings."""

    def model_outputs(self, batch):
        outputs = self.model(batch['img'], return_outputs=True)
        return CASNStep(outputs.id_logits, outputs.maps, outputs.siamese)


def ia_term(weight, alpha, beta):
    def fn(engine, batch, step):
        loss, _ = identification_attention_loss(engine.model, batch['img'], step.maps,
                                                 batch['pid'], alpha, beta)
        return loss
    return LossTerm('loss_ia', weight, fn)


def verification_term(weight):
    def fn(engine, batch, step):
        siamese = step.siamese
        same = pair_labels(batch['pid']).float()
        return F.binary_cross_entropy_with_logits(
            engine.model.verification_logits(siamese[0::2], siamese[1::2]), same)
    return LossTerm('loss_ver', weight, fn)


def sa_term(weight, threshold):
    def fn(engine, batch, step):
        return siamese_attention_loss(engine.model, step.maps,
                                      pair_labels(batch['pid']), threshold)
    return LossTerm('loss_sa', weight, fn)


def part_accuracy(engine, batch, step):
    """Top-1 training accuracy; PCB's part logits are summed first."""
    logits = logits_of(step.output)
    if isinstance(logits, (list, tuple)):
        logits = sum(logits)
    return accuracy(engine, batch, logits)


def positive_pairs(engine, batch, step):
    return pair_labels(batch['pid']).sum()


def build_casn_engine(cfg, datamanager, model, optimizer, scheduler):
    """Engine builder registered as ``casn`` (called by ``plugins.build_engine``)."""
    if not hasattr(model, 'verification_logits'):
        raise TypeError("engine 'casn' needs a CASN model (casn_ide_resnet50, casn_pcb_resnet50), "
                        'got {}'.format(type(model).__name__))
    opts = cfg.casn
    if (opts.weight_ver or opts.weight_sa) and cfg.sampler.train_sampler != 'PairwiseSampler':
        raise ValueError("engine 'casn' with casn.weight_ver or casn.weight_sa needs "
                         "sampler.train_sampler 'PairwiseSampler' (adjacent images form the pairs), "
                         'got {!r}'.format(cfg.sampler.train_sampler))
    engine = CASNEngine(datamanager, model, optimizer, scheduler, **engine_options(cfg),
                        metric_fns={'acc': part_accuracy, 'positive_pairs': positive_pairs})
    identification = cross_entropy_term(engine, 1.0, cfg.loss.softmax.label_smooth)
    engine.loss_terms = [
        LossTerm('loss_id', 1.0, identification.fn),
        ia_term(opts.weight_ia, opts.alpha, opts.beta),
        verification_term(opts.weight_ver),
        sa_term(opts.weight_sa, opts.sa_threshold),
    ]
    return engine
