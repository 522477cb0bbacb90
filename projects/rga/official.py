"""RGA against the official code (microsoft/Relation-Aware-Global-Attention-Networks).

``tools/check_official.py --method rga --official-dir CLONE`` runs :func:`run`: for
RGA-S, RGA-C and RGA-SC it builds the official ``ResNet50_RGA_Model``
(``reid/models/rga_model.py``) and our :class:`~projects.rga.model.RGANet` at the
official 256x128, copies every official parameter and BatchNorm buffer onto ours
(:func:`official_name` maps the names; an unmapped or misshaped tensor is an error)
and compares, in float64, the training outputs, every gradient of one identical
loss, the BatchNorm running statistics after that forward and both retrieval
features in eval mode. The official modules are imported from the clone at run
time, never at import time.
"""
import contextlib
import io
import os
import re
import sys
import types

import torch
import torch.nn as nn
import torch.nn.functional as F

from plugins import Report, compare, copy_parameters

from .model import RGANet

HEIGHT, WIDTH = 256, 128  # the official input size: only there does the official code run
BATCH = 3  # 2 would leave the BN neck's output (two samples: +-1) with almost no gradient
NUM_CLASSES = 751  # Market-1501's training identities
VARIANTS = (('RGA-S', 'rgas', 's'), ('RGA-C', 'rgac', 'c'), ('RGA-SC', 'rgasc', 'sc'))

# our state-dict prefix -> the official one; the rest of a name is the same on both sides
# (torchvision's Bottleneck and our RGAModule keep the official sub-module names)
_PREFIXES = (
    (r'trunk\.stem\.0\.', lambda m: 'backbone.conv1.'),
    (r'trunk\.stem\.1\.', lambda m: 'backbone.bn1.'),
    (r'trunk\.stages\.([0-3])\.', lambda m: 'backbone.layer{}.'.format(int(m.group(1)) + 1)),
    (r'rga\.([0-3])\.', lambda m: 'backbone.rga_att{}.'.format(int(m.group(1)) + 1)),
    (r'head\.neck\.', lambda m: 'feat_bn.'),
    (r'head\.classifier\.1\.', lambda m: 'cls.'),
)


def official_name(name):
    """The official ``ResNet50_RGA_Model`` state-dict key of our key ``name``.

    A function of names only, so tests can check it covers our models without a clone.
    Raises KeyError for a name with no official counterpart.
    """
    for pattern, prefix in _PREFIXES:
        match = re.match(pattern, name)
        if match:
            return prefix(match) + name[match.end():]
    raise KeyError('our tensor {!r} has no official counterpart'.format(name))


def mapped_pairs(ours, official):
    """``(our_tensor, official_tensor, official_name)`` for every parameter and buffer.

    Raises ValueError naming every tensor left over on either side, so that nothing
    is silently left at its initial value.
    """
    our_tensors = ours.state_dict(keep_vars=True)
    their_tensors = official.state_dict(keep_vars=True)
    mapping = {}
    for name in our_tensors:
        key = official_name(name)
        if key in mapping:
            raise ValueError('ours {!r} and {!r} both map to official {!r}'.format(
                mapping[key], name, key))
        mapping[key] = name
    unmapped = sorted(set(their_tensors) - set(mapping))
    missing = sorted(set(mapping) - set(their_tensors))
    if unmapped or missing:
        raise ValueError('name mapping incomplete: official tensors without a counterpart in ours: '
                         '{}; our tensors mapped to no official tensor: {}'.format(
                             unmapped or 'none', [mapping[k] for k in missing] or 'none'))
    return [(our_tensors[mapping[key]], their_tensors[key], key) for key in their_tensors]


class _SysModules:
    """``sys.modules`` seen as attributes, so ``OfficialCode.patch`` can add (and later
    remove) an entry and list it with the other patches."""

    __name__ = 'sys.modules'

    def __getattr__(self, name):
        try:
            return sys.modules[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        sys.modules[name] = value

    def __delattr__(self, name):
        del sys.modules[name]


def import_official(code):
    """The official ``reid.models.rga_model`` module.

    The clone's ``reid/__init__.py`` imports the whole training and evaluation stack
    (scikit-learn, h5py, data managers), none of which the model needs and which a
    model check should not require, so ``reid`` is registered as a bare package of
    the clone's ``reid`` folder and only the model files are run.
    """
    package = types.ModuleType('reid', 'the clone\'s reid package, __init__.py not run')
    package.__path__ = [os.path.join(code.root, 'reid')]
    code.patch(_SysModules(), 'reid', package,
               'bare package: its `__init__.py` imports the training/evaluation stack '
               '(scikit-learn, h5py), which the model does not use')
    with contextlib.redirect_stdout(io.StringIO()):  # the official modules print their flags
        return code.module('reid.models.rga_model')


def _randomise_batchnorm(model, generator):
    """Non-trivial BatchNorm affine parameters and running statistics (a trained model's
    are), so that the mapping of each and the eval-mode normalisation are exercised."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                n = module.num_features
                module.weight.copy_(1 + 0.1 * torch.randn(n, generator=generator))
                module.bias.copy_(0.1 * torch.randn(n, generator=generator))
                module.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(n, generator=generator))
                module.num_batches_tracked.fill_(100)


def _loss(logits, feature, labels, projection):
    """One scalar read from both outputs: CE on the logits + a linear term on the pooled feature."""
    return F.cross_entropy(logits, labels) + (feature * projection).sum(1).mean()


def _groups(pairs):
    """``(our_name, official_name)`` pairs grouped for reporting: trunk, each RGA module, head."""
    groups = {}
    for ours, theirs in pairs:
        match = re.match(r'backbone\.rga_att(\d)\.', theirs)
        group = ('RGA module {} (`rga_att{}`)'.format(match.group(1), match.group(1)) if match else
                 'trunk (`conv1`, `bn1`, `layer1`-`layer4`)' if theirs.startswith('backbone.')
                 else 'head (`feat_bn`, `cls`)')
        groups.setdefault(group, []).append((ours, theirs))
    return groups


def check_variant(module, title, branch_name, variant, generator):
    """Tables for one variant: training outputs and loss, gradients, BN statistics, eval features."""
    with contextlib.redirect_stdout(io.StringIO()):
        official = module.ResNet50_RGA_Model(pretrained=False, num_classes=NUM_CLASSES,
                                             height=HEIGHT, width=WIDTH, branch_name=branch_name)
    ours = RGANet(NUM_CLASSES, loss='triplet', variant=variant, height=HEIGHT, width=WIDTH)
    _randomise_batchnorm(official, generator)
    official.double()
    ours.double()
    pairs = mapped_pairs(ours, official)
    copy_parameters(pairs)

    images = torch.randn(BATCH, 3, HEIGHT, WIDTH, generator=generator, dtype=torch.float64)
    labels = torch.randint(NUM_CLASSES, (BATCH,), generator=generator)
    projection = torch.randn(2048, generator=generator, dtype=torch.float64) / 2048 ** 0.5

    official.train()
    ours.train()
    feat_, _, cls_feat = official([images], training=True)
    logits, feature = ours(images)
    their_loss = _loss(cls_feat, feat_, labels, projection)
    our_loss = _loss(logits, feature, labels, projection)
    their_loss.backward()
    our_loss.backward()
    outputs = [compare('logits (official `cls_feat`)', logits, cls_feat),
               compare('pooled feature (official `feat_`)', feature, feat_),
               compare('loss (CE + linear term on the feature)', our_loss, their_loss)]

    names = {key: name for name, key in zip(ours.state_dict(), map(official_name, ours.state_dict()))}
    params = dict(official.named_parameters())
    ours_params = dict(ours.named_parameters())
    gradient_pairs, frozen = [], []
    for key, theirs in params.items():
        mine = ours_params[names[key]]
        if (theirs.grad is None) != (mine.grad is None):
            raise ValueError('{}: gradient is {} in ours, {} in the official model'.format(
                key, 'None' if mine.grad is None else 'set', 'None' if theirs.grad is None else 'set'))
        if theirs.grad is None:
            frozen.append(key)
        else:
            gradient_pairs.append((names[key], key))
    gradients = [compare('gradients, {} ({} tensors)'.format(group, len(members)),
                         [ours_params[o].grad for o, _ in members],
                         [params[t].grad for _, t in members])
                 for group, members in _groups(gradient_pairs).items()]

    buffers = dict(official.named_buffers())
    ours_buffers = dict(ours.named_buffers())
    statistics = [compare('BN {} ({} layers)'.format(kind, len(keys)),
                          [ours_buffers[names[k]] for k in keys], [buffers[k] for k in keys])
                  for kind in ('running_mean', 'running_var', 'num_batches_tracked')
                  for keys in [[k for k in buffers if k.endswith('.' + kind)]]]

    official.eval()
    ours.eval()
    with torch.no_grad():
        feat_, feat = official([images], training=False)
        ours.head.eval_feature = 'pooled'
        pooled = ours(images)
        ours.head.eval_feature = 'bnneck'
        neck = ours(images)
    retrieval = [compare('eval feature `pooled` (official `feat_`, the default)', pooled, feat_),
                 compare('eval feature `bnneck` (official `feat`)', neck, feat)]

    shape = '{} images of {}x{}, {} classes, float64'.format(BATCH, HEIGHT, WIDTH, NUM_CLASSES)
    return [('{}: training-mode outputs ({})'.format(title, shape), outputs),
            ('{}: gradients after one backward ({} trained tensors; frozen in both: {})'.format(
                title, len(gradient_pairs), ', '.join('`{}`'.format(k) for k in frozen) or 'none'),
             gradients),
            ('{}: BatchNorm buffers after the training-mode forward'.format(title), statistics),
            ('{}: eval-mode retrieval features'.format(title), retrieval)], len(pairs)


def run(code, args):
    """The check for ``tools/check_official.py --method rga``: see the module docstring."""
    saved_path = list(sys.path)
    try:
        module = import_official(code)
        report = Report()
        generator = torch.Generator().manual_seed(0)
        counts = []
        for title, branch_name, variant in VARIANTS:
            torch.manual_seed(0)
            tables, count = check_variant(module, title, branch_name, variant, generator)
            for table_title, rows in tables:
                report.table(table_title, rows)
            counts.append('{} {}'.format(title, count))
    finally:
        sys.path[:] = saved_path  # the official rga_branches.py appends its folder to sys.path
    report.notes += [
        'Every official parameter and BatchNorm buffer was copied onto ours by name '
        '(tensors per model: {}); BatchNorm weights, biases and running statistics were '
        'first randomised in the official model so that each is exercised.'.format(', '.join(counts)),
        '',
        'Only 256x128 is checked: the intended difference of ours (one hidden unit where the '
        'official width `size // ratio` is zero) is at inputs of 128x64 and below, where the '
        'official model cannot run. At 256x128 every official width is positive and the '
        'parameter shapes are the same (checked by the mapping above).',
    ]
    return report
