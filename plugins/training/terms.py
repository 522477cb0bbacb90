"""The loss-term library: weighted terms of an engine's main loss, and training metrics.

A :class:`LossTerm` is ``(name, weight, fn)`` with ``fn(engine, batch, outputs) -> tensor``;
the engine adds ``weight * fn(...)`` to the main loss and logs each term by name. ``outputs``
is the step's object (:mod:`plugins.training.step`); the terms here read the model's output in it.
"""
from collections import namedtuple

from torchreid.reid import metrics

from plugins.nn.losses import BatchHardTriplet, CrossEntropyLabelSmooth
from plugins.nn.modules import logits_of
from plugins import distributed
from plugins.training.step import model_output

LossTerm = namedtuple('LossTerm', ['name', 'weight', 'fn'])
LossTerm.__doc__ = """A weighted term of the main loss; ``fn(engine, batch, outputs) -> tensor``.

``weight`` is a number or a function ``engine -> number`` (a schedule such as a
warm-up); a term whose weight is zero at a step is not computed at that step."""


def cross_entropy_term(engine, weight, label_smooth, logits_fn=logits_of):
    """Label-smoothed cross-entropy (torchreid's ``CrossEntropyLoss``, eps 0.1) on the identity logits."""
    criterion = CrossEntropyLabelSmooth(0.1 if label_smooth else 0.0)
    return LossTerm('loss_x', weight, lambda e, batch, outputs: e.compute_loss(
        criterion, logits_fn(model_output(outputs)), batch['pid']))


def triplet_term(engine, weight, margin):
    """Batch-hard triplet loss (torchreid's ``TripletLoss``) on the features of ``(logits, feats)``.

    Under torchrun the hardest positives and negatives are mined in the global
    batch (features gathered from every rank), as in a single-process run.
    """
    criterion = BatchHardTriplet(margin=margin)
    return LossTerm('loss_t', weight, lambda e, batch, outputs: e.compute_loss(
        criterion, distributed.gather_with_grad(model_output(outputs)[1]),
        distributed.gather_with_grad(batch['pid'])))


def accuracy(engine, batch, outputs):
    """Top-1 training accuracy in percent, as the host's engines log it."""
    return metrics.accuracy(logits_of(model_output(outputs)), batch['pid'])[0]


def reid_loss_terms(cfg, engine):
    """The ReID terms ``loss.name`` asks for: CE ('softmax'), or triplet + CE ('triplet')."""
    smooth = cfg.loss.softmax.label_smooth
    if cfg.loss.name == 'softmax':
        return [cross_entropy_term(engine, 1.0, smooth)]
    return [triplet_term(engine, cfg.loss.triplet.weight_t, cfg.loss.triplet.margin),
            cross_entropy_term(engine, cfg.loss.triplet.weight_x, smooth)]
