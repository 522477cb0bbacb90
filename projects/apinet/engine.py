"""The ``apinet`` engine: the host's loop (``plugins.PluginEngine``) with API-Net's loss terms.

One training step: forward the batch (logits, pooled features), mine 2B pairs
on the detached BNNeck features (:func:`~projects.apinet.losses.mine_pairs`),
run the API module on them (:meth:`~projects.apinet.model.APINet.pair_logits`),
then the weighted terms, each logged under its own name:

* ``loss_pair_ce`` (``apinet.weight_pair_ce``): cross-entropy over the four attentive logits;
* ``loss_rank`` (``apinet.weight_rank``): score-ranking regularisation, margin ``apinet.rank_margin``;
* ``loss_t`` (``loss.triplet.weight_t``): batch-hard triplet on the pooled feature
  (``plugins.triplet_term``);
* ``loss_x`` (``loss.triplet.weight_x``): label-smoothed cross-entropy on the BNNeck
  logits (``plugins.cross_entropy_term``).

Also logged: ``acc`` (image-level top-1) and ``pairs_dropped`` (invalid pairs,
whose anchor has no same- or no other-identity image in the batch).
"""
from collections import namedtuple
from dataclasses import dataclass

import torch

from plugins import (LossTerm, PluginEngine, Step, accuracy, cross_entropy_term, engine_options,
                     triplet_term)

from .losses import mine_pairs, pair_cross_entropy, score_ranking_loss

PairOutputs = namedtuple('PairOutputs', ['self_logits', 'other_logits', 'labels', 'valid'])
PairOutputs.__doc__ = """Attentive logits of one step: (2N, C) each, labels and validity (2N,)."""

TORCHREID_LABEL_SMOOTH = 0.1  # epsilon of torchreid's CrossEntropyLoss(label_smooth=True)


@dataclass
class APINetStep(Step):
    """One step: the model's ``output`` ``(logits, pooled features)`` and the ``pairs`` mined
    in the batch with their attentive logits (:class:`PairOutputs`)."""

    pairs: PairOutputs


def pair_outputs(model, features, pids):
    """The batch's pairs (:func:`~projects.apinet.losses.mine_pairs` on the neck features of
    the pooled ``features``) and their attentive logits."""
    features = model.neck_features(features)
    pairs = mine_pairs(features, pids)
    self_logits, other_logits = model.pair_logits(features, pairs.anchor, pairs.partner)
    labels = pids[torch.cat([pairs.anchor, pairs.partner])]
    return PairOutputs(self_logits, other_logits, labels, torch.cat([pairs.valid] * 2))


class APINetEngine(PluginEngine):
    """:class:`plugins.PluginEngine` whose forward also mines the pairs (every step logs them)."""

    def model_outputs(self, batch):
        output = self.model(batch['img'])
        return APINetStep(output, pair_outputs(self.model, output[1], batch['pid']))


def pairs_dropped(engine, batch, step):
    """Number of invalid pairs this step (0 with PK batches of K >= 2)."""
    return (~step.pairs.valid).sum() / 2  # valid is repeated for anchors and partners


def check_apinet_run(cfg, model):
    """The engine needs the pair path and the pooled features in the training output."""
    if not hasattr(model, 'pair_logits'):
        raise TypeError("engine 'apinet' needs an API-Net model (apinet_resnet50, "
                        'apinet_resnet101), got {}'.format(type(model).__name__))
    if cfg.loss.name != 'triplet':
        raise ValueError("engine 'apinet' needs loss.name 'triplet' so that the model returns "
                         '(logits, features) in training; got {!r}'.format(cfg.loss.name))


def build_apinet_engine(cfg, datamanager, model, optimizer, scheduler):
    """Engine builder registered as ``apinet`` (called by ``plugins.build_engine``)."""
    check_apinet_run(cfg, model)
    engine = APINetEngine(datamanager, model, optimizer, scheduler, **engine_options(cfg),
                          metric_fns={'acc': accuracy, 'pairs_dropped': pairs_dropped})
    opts = cfg.apinet
    smooth = TORCHREID_LABEL_SMOOTH if opts.pair_label_smooth else 0.0
    margin = opts.rank_margin
    engine.loss_terms = [
        LossTerm('loss_pair_ce', opts.weight_pair_ce, lambda e, batch, step: pair_cross_entropy(
            *step.pairs, label_smooth=smooth)),
        LossTerm('loss_rank', opts.weight_rank, lambda e, batch, step: score_ranking_loss(
            *step.pairs, margin=margin)),
        triplet_term(engine, cfg.loss.triplet.weight_t, cfg.loss.triplet.margin),
        cross_entropy_term(engine, cfg.loss.triplet.weight_x, cfg.loss.softmax.label_smooth),
    ]
    return engine
