"""API-Net against the official code (PeiqinZhuang/API-Net), run by ``tools/check_official.py``.

``python tools/check_official.py --method apinet --official-dir YOUR_CLONE``

Nothing of the official code is copied here: :func:`run` imports ``models.py`` from
the user's clone (``API_Net``, its ``get_pairs`` and ``pdist``). The official losses
live inline in ``train.py``'s ``train()`` loop (a Python 2 script, not importable);
:func:`official_losses` follows those lines on the official network's outputs, and
:func:`check_train_source` makes sure the clone's ``train.py`` still has them.

Three comparisons, all in float64 on a CPU, dropout off in both networks (random
masks cannot match):

A. **Whole network**, official configuration: our ``APINet(depth='resnet101',
   last_stride=2, bnneck=False)`` with every official tensor mapped onto it
   (:data:`OFFICIAL_TO_OURS`), both fed the same images: pooled features, mined
   pairs, the four logits, the losses, gradients of the official total loss vs ours.
B. **Our ReID default** (``apinet_resnet50``: ResNet-50, last stride 1, BNNeck):
   the official trunk cannot be mapped onto it, so the official head (its
   ``conv`` replaced by an identity) is fed our BNNeck features, the tensor our
   pair path reads; the official API module and classifier are mapped onto ours.
   Trunk gradients are those of the official loss vs ours, both flowing back
   through our trunk.
C. **A singleton identity** (network of A): the official code pairs an anchor
   without a same-identity partner with image 0, ours drops that pair (README);
   rows compare the valid pairs, a note gives the size of the difference.
"""
import re
import time
import types

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from plugins import Report, compare, copy_parameters, gradient_rows

from .engine import pair_outputs
from .losses import mine_pairs, pair_cross_entropy, score_ranking_loss
from .model import APINet

# official state-dict prefix -> ours. The official trunk is
# nn.Sequential(*list(torchvision resnet101.children())[:-2]): children 0 conv1, 1 bn1,
# 2 relu, 3 maxpool (no tensors), 4..7 layer1..layer4.
OFFICIAL_TO_OURS = (
    ('conv.0.', 'trunk.stem.0.'),
    ('conv.1.', 'trunk.stem.1.'),
    ('conv.4.', 'trunk.stages.0.'),
    ('conv.5.', 'trunk.stages.1.'),
    ('conv.6.', 'trunk.stages.2.'),
    ('conv.7.', 'trunk.stages.3.'),
    ('map1.', 'api.mutual.0.'),  # Linear 2D -> 512
    ('map2.', 'api.mutual.2.'),  # Linear 512 -> D (api.mutual.1 is the dropout)
    ('fc.', 'head.classifier.1.'),  # shared classifier (head.classifier.0 is the dropout)
)
HEAD_PREFIXES = ('map1.', 'map2.', 'fc.')
TRUNK_GROUPS = (('stem', ('conv.0.', 'conv.1.')), ('layer1', ('conv.4.',)), ('layer2', ('conv.5.',)),
                ('layer3', ('conv.6.',)), ('layer4', ('conv.7.',)))

# the lines of the official train.py that official_losses follows (checked in the clone)
TRAIN_LINES = (
    'criterion = nn.CrossEntropyLoss()',
    'rank_criterion = nn.MarginRankingLoss(margin=0.05)',
    'softmax_layer = nn.Softmax(dim=1)',
    'logits = torch.cat([self_logits, other_logits], dim=0)',
    'targets = torch.cat([labels1, labels2, labels1, labels2], dim=0)',
    'softmax_loss = criterion(logits, targets)',
    'rank_loss = rank_criterion(self_scores, other_scores, flag)',
    'loss = softmax_loss + rank_loss',
)
RANK_MARGIN = 0.05  # official train.py; also our config default apinet.rank_margin

PIDS = (3, 0, 2, 1, 0, 3, 1, 2)  # 4 identities x 2 images, interleaved
SINGLETON_PIDS = (0, 1, 4, 0, 2, 1, 2)  # identity 4 has one image (index 2)
HEIGHT, WIDTH = 64, 32


def map_names(official_names, our_names, head_only=False):
    """``[(our_name, official_name)]`` for every official tensor name (with ``head_only``,
    the API module and classifier only). Raises ValueError on an official name outside
    :data:`OFFICIAL_TO_OURS`, a mapped name we lack, or one of our names (of the mapped
    part) that no official tensor reaches."""
    our_names = list(our_names)
    pairs, unmapped = [], []
    for name in official_names:
        if head_only and not name.startswith(HEAD_PREFIXES):
            continue
        prefix = next((p for p, _ in OFFICIAL_TO_OURS if name.startswith(p)), None)
        if prefix is None:
            unmapped.append(name)
            continue
        pairs.append((dict(OFFICIAL_TO_OURS)[prefix] + name[len(prefix):], name))
    if unmapped:
        raise ValueError('official tensors with no counterpart in ours: {}'.format(', '.join(unmapped)))
    missing = [ours for ours, _ in pairs if ours not in our_names]
    if missing:
        raise ValueError('official tensors mapped onto names our model lacks: {}'.format(
            ', '.join('{} -> {}'.format(name, ours) for ours, name in pairs if ours in missing)))
    targets = tuple(ours for _, ours in OFFICIAL_TO_OURS
                    if not head_only or ours.startswith(('api.', 'head.classifier.')))
    reached = {ours for ours, _ in pairs}
    unreached = [n for n in our_names if n.startswith(targets) and n not in reached]
    if unreached:
        raise ValueError('our tensors that no official tensor maps onto: {}'.format(', '.join(unreached)))
    return pairs


def tensor_pairs(ours, official, head_only=False):
    """``[(our_tensor, official_tensor, official_name)]``: parameters and buffers."""
    our_tensors = dict(ours.named_parameters(), **dict(ours.named_buffers()))
    official_tensors = dict(official.named_parameters(), **dict(official.named_buffers()))
    return [(our_tensors[o], official_tensors[n], n)
            for o, n in map_names(official_tensors, our_tensors, head_only)]


def parameter_pairs(pairs):
    return [p for p in pairs if isinstance(p[1], nn.Parameter)]


def check_train_source(root):
    """The lines of the clone's ``train.py`` that :func:`official_losses` follows, or a ValueError."""
    import os
    with open(os.path.join(root, 'train.py')) as f:
        source = re.sub(r'[ \t]+', ' ', f.read())
    missing = [line for line in TRAIN_LINES if re.sub(r'[ \t]+', ' ', line) not in source]
    if missing:
        raise ValueError('the official train.py no longer has the loss lines this check follows: '
                         '{}'.format('; '.join(missing)))


def official_losses(logit1_self, logit1_other, logit2_self, logit2_other, labels1, labels2):
    """The official train.py's losses on the official network's outputs, line by line.

    One change: train.py builds ``self_logits``/``other_logits`` as float32 zeros with
    200 columns and copies the logits in; here they have the logits' dtype (float64) and
    width (the official ``fc`` has 200 outputs, so the width is the same).
    Returns ``(softmax_loss, rank_loss, loss, self_scores, other_scores)``.
    """
    criterion = nn.CrossEntropyLoss()
    rank_criterion = nn.MarginRankingLoss(margin=RANK_MARGIN)
    softmax_layer = nn.Softmax(dim=1)
    batch_size = logit1_self.shape[0]
    self_logits = logit1_self.new_zeros(2 * batch_size, logit1_self.shape[1])
    other_logits = logit1_self.new_zeros(2 * batch_size, logit1_self.shape[1])
    self_logits[:batch_size] = logit1_self
    self_logits[batch_size:] = logit2_self
    other_logits[:batch_size] = logit1_other
    other_logits[batch_size:] = logit2_other
    logits = torch.cat([self_logits, other_logits], dim=0)
    targets = torch.cat([labels1, labels2, labels1, labels2], dim=0)
    softmax_loss = criterion(logits, targets)
    rows = torch.arange(2 * batch_size).long()
    self_scores = softmax_layer(self_logits)[rows, torch.cat([labels1, labels2], dim=0)]
    other_scores = softmax_layer(other_logits)[rows, torch.cat([labels1, labels2], dim=0)]
    flag = torch.ones([2 * batch_size, ], dtype=self_scores.dtype)
    rank_loss = rank_criterion(self_scores, other_scores, flag)
    return softmax_loss, rank_loss, softmax_loss + rank_loss, self_scores, other_scores


class _Run:
    """One forward of both sides on a batch: official outputs, pairs and losses; ours."""

    def __init__(self, official, ours, official_input, pids, our_outputs, keep=None):
        captured = []
        handle = official.avg.register_forward_hook(lambda m, i, o: captured.append(o))
        try:
            out = official(official_input, pids, flag='train')
        finally:
            handle.remove()
        self.official_pooled = captured[0].squeeze()
        # the official mining, called again on the features it mined on (deterministic)
        intra, inter, _, _ = official.get_pairs(self.official_pooled, pids)
        self.official_pairs = torch.cat([intra, inter])  # (2B, 2): anchor, partner
        logits, labels1, labels2 = out[:4], out[4], out[5]
        self.official_labels = torch.cat([labels1, labels2])
        self.official_logits = logits
        self.keep = keep  # rows (of 2B) the singleton comparison keeps; None: all
        if keep is not None:
            logits = [t[keep] for t in logits]
            labels1, labels2 = labels1[keep], labels2[keep]
        (self.official_ce, self.official_rank, self.official_loss,
         self.official_self_scores, self.official_other_scores) = official_losses(*logits, labels1, labels2)
        self.official_full = official_losses(*out) if keep is not None else None

        self.our_pooled = our_outputs[1]
        self.pairs = mine_pairs(ours.neck_features(our_outputs[1]), pids)
        cached = pair_outputs(ours, our_outputs[1], pids)
        self.self_logits, self.other_logits, self.labels, self.valid = cached
        self.ce = pair_cross_entropy(*cached)
        self.rank = score_ranking_loss(*cached, margin=RANK_MARGIN)
        self.loss = self.ce + self.rank

    def rows(self):
        n = self.pairs.anchor.shape[0]  # 2B
        keep = torch.arange(n) if self.keep is None else self.keep
        both = torch.cat([keep, keep + n])  # anchors' rows, then partners'
        o1s, o1o, o2s, o2o = (t[keep] for t in self.official_logits)
        valid_rows = self.valid[both]
        labels = self.labels[both]

        def scores(logits):
            return F.softmax(logits[both], dim=1).gather(1, labels[:, None]).squeeze(1)
        if not valid_rows.all():
            raise AssertionError('a compared row is one of our invalid pairs')
        return [
            compare('pair mining: anchors', self.pairs.anchor[keep], self.official_pairs[keep, 0]),
            compare('pair mining: intra partners', self.pairs.partner[keep[keep < n // 2]],
                    self.official_pairs[keep[keep < n // 2], 1]),
            compare('pair mining: inter partners', self.pairs.partner[keep[keep >= n // 2]],
                    self.official_pairs[keep[keep >= n // 2], 1]),
            compare('pair labels (labels1, labels2)', labels, self.official_labels[both]),
            compare('logit1_self', self.self_logits[keep], o1s),
            compare('logit1_other', self.other_logits[keep], o1o),
            compare('logit2_self', self.self_logits[keep + n], o2s),
            compare('logit2_other', self.other_logits[keep + n], o2o),
            compare('true-class scores, self', scores(self.self_logits), self.official_self_scores),
            compare('true-class scores, other', scores(self.other_logits), self.official_other_scores),
            compare('softmax_loss (pair CE)', self.ce, self.official_ce),
            compare('rank_loss (score ranking, margin 0.05)', self.rank, self.official_rank),
            compare('loss = softmax_loss + rank_loss', self.loss, self.official_loss),
        ]


def trunk_rows(prefix, grads_ours, grads_official, pairs):
    """Gradient rows of the trunk, one per stage (all its tensors flattened together)."""
    rows = []
    for stage, prefixes in TRUNK_GROUPS:
        chosen = [i for i, p in enumerate(pairs) if p[2].startswith(prefixes)]
        rows.append(compare('{} grad {} ({} tensors)'.format(prefix, stage, len(chosen)),
                            [grads_ours[i] for i in chosen], [grads_official[i] for i in chosen]))
    return rows


class _ScalarElementArray(np.ndarray):
    """An array that takes a one-element array as an element, as older NumPy did (with a
    DeprecationWarning since 1.25); newer NumPy raises instead."""

    def __setitem__(self, key, value):
        value = np.asarray(value)
        if value.ndim and value.size == 1:
            value = value.reshape(())
        super().__setitem__(key, value)


def _numpy_with_scalar_elements():
    """NumPy for the official ``models.py``: ``zeros`` gives :class:`_ScalarElementArray`
    (``get_pairs`` assigns ``labels[i]``, shape (1,), to one element), the rest is NumPy's."""
    shim = types.ModuleType('numpy')
    shim.__getattr__ = lambda name: getattr(np, name)
    shim.zeros = lambda *a, **k: np.zeros(*a, **k).view(_ScalarElementArray)
    return shim


def _needs_scalar_elements():
    try:
        np.zeros(1)[0] = np.zeros(1)
    except (TypeError, ValueError):
        return True
    return False


def images(n, seed):
    return torch.randn(n, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64)


def run(code, args):
    start = time.perf_counter()
    check_train_source(code.root)
    models = code.module('models')
    if not hasattr(models, 'API_Net'):
        raise ValueError('{}/models.py has no API_Net: not a clone of PeiqinZhuang/API-Net'.format(code.root))
    code.patch(models, 'device', torch.device('cpu'), "the module's device: the check runs on a CPU")
    if _needs_scalar_elements():
        code.patch(models, 'np', _numpy_with_scalar_elements(),
                   "NumPy, except that `np.zeros` arrays take a one-element array as an element "
                   "(`get_pairs` assigns `labels[i]`, shape (1,)); NumPy {} refuses, older NumPy "
                   "converted it (deprecated since 1.25)".format(np.__version__))
    torch.manual_seed(0)
    official = models.API_Net().double().train()
    code.patch(official, 'avg', nn.AdaptiveAvgPool2d(1),
               'global average pooling: AvgPool2d(kernel_size=14) is the global mean only at the '
               "official 448x448 input; the check's input is {}x{}".format(HEIGHT, WIDTH))
    code.patch(official, 'drop', nn.Dropout(0.0), 'dropout off (random masks cannot match); ours too')
    num_classes = official.fc.out_features
    report = Report()
    notes = []

    # A: the whole network in the official configuration
    ours = APINet(num_classes, 'triplet', depth='resnet101', last_stride=2, bnneck=False,
                  dropout=0.0).double().train()
    pairs = tensor_pairs(ours, official)
    copy_parameters(pairs)
    params = parameter_pairs(pairs)
    pids = torch.tensor(PIDS)
    x = images(len(PIDS), seed=1)
    a = _Run(official, ours, x, pids, ours(x))
    for module in (official, ours):
        module.zero_grad()
    a.official_loss.backward()
    a.loss.backward()
    head = [p for p in params if p[2].startswith(HEAD_PREFIXES)]
    trunk = [p for p in params if not p[2].startswith(HEAD_PREFIXES)]
    report.table(
        "A. Whole network, official configuration: official `API_Net` (ResNet-101) vs our "
        "`APINet(depth='resnet101', last_stride=2, bnneck=False, dropout=0)`, all {} official "
        "tensors mapped; {} images ({} identities x 2), {}x{}, float64".format(
            len(pairs), len(PIDS), len(set(PIDS)), HEIGHT, WIDTH),
        [compare('pooled trunk features', a.our_pooled, a.official_pooled)] + a.rows()
        + gradient_rows('API/classifier', head)
        + trunk_rows('trunk', [p[0].grad for p in trunk], [p[1].grad for p in trunk], trunk))
    notes.append('A: pairs (anchor: intra partner, inter partner), identical on both sides: ' + ', '.join(
        '{}: ({}, {})'.format(i, int(a.official_pairs[i, 1]), int(a.official_pairs[i + len(PIDS), 1]))
        for i in range(len(PIDS))) + '.')

    # C: a singleton identity, same networks
    spids = torch.tensor(SINGLETON_PIDS)
    xs = images(len(SINGLETON_PIDS), seed=2)
    our_out = ours(xs)
    valid = mine_pairs(ours.neck_features(our_out[1]), spids).valid
    keep = torch.nonzero(valid).squeeze(1)
    c = _Run(official, ours, xs, spids, our_out, keep=keep)
    # head gradients only: a trunk backward of ResNet-101 costs seconds, and A covers the trunk
    g_official = torch.autograd.grad(c.official_loss, [p[1] for p in head])
    g_ours = torch.autograd.grad(c.loss, [p[0] for p in head])
    dropped = [int(i) for i in torch.nonzero(~valid).squeeze(1)]
    c_rows = ([compare('pooled trunk features', c.our_pooled, c.official_pooled)] + c.rows()
              + [compare('API/classifier grads ({} tensors)'.format(len(head)), g_ours, g_official)])

    # B: our ReID default model; the official head fed our BNNeck features
    torch.manual_seed(0)
    ours_r50 = APINet(num_classes, 'triplet', depth='resnet50', last_stride=1, bnneck=True,
                      dropout=0.0).double().train()
    head_pairs = tensor_pairs(ours_r50, official, head_only=True)
    copy_parameters(head_pairs)
    code.patch(official, 'conv', nn.Identity(),
               'part B only: the official head reads our BNNeck features (given as 1x1 maps)')
    out = ours_r50(x)
    features = ours_r50.neck_features(out[1])
    b = _Run(official, ours_r50, features[:, :, None, None], pids, out)
    trunk_params = [p for n, p in ours_r50.named_parameters()
                    if p.requires_grad and not n.startswith(('api.', 'head.classifier.'))]
    official_head = [p[1] for p in head_pairs if isinstance(p[1], nn.Parameter)]
    our_head = [p[0] for p in head_pairs if isinstance(p[1], nn.Parameter)]
    names = [p[2] for p in head_pairs if isinstance(p[1], nn.Parameter)]
    g_official = torch.autograd.grad(b.official_loss, official_head + trunk_params, retain_graph=True)
    g_ours = torch.autograd.grad(b.loss, our_head + trunk_params)
    k = len(official_head)
    report.table(
        'B. Our ReID default (`apinet_resnet50`: ResNet-50, last stride 1, BNNeck; dropout 0): '
        'the official head (API module, classifier, `get_pairs`) fed our BNNeck features, its '
        'map1/map2/fc mapped onto ours; same images as A',
        b.rows()
        + [compare('API/classifier grad {}'.format(n), go, gt)
           for n, go, gt in zip(names, g_ours[:k], g_official[:k])]
        + [compare('our trunk + BNNeck grads, official loss vs ours ({} tensors)'.format(
            len(trunk_params)), g_ours[k:], g_official[k:])])
    report.table(
        'C. A singleton identity (network of A; identities {}, image {} alone): the {} valid '
        'pairs of ours vs the same rows of the official outputs, official loss formula on '
        'those rows'.format(list(SINGLETON_PIDS), SINGLETON_PIDS.index(4), int(valid.sum())), c_rows)

    full = c.official_full
    notes.append(
        'C (documented difference, README "Pair construction"): for image {s} (identity alone in '
        'the batch) the official `get_pairs` takes `argmin` of an all-inf row and pairs it with '
        'image {p} (identity {lp}) as its intra pair, labels ({ls}, {lp}); ours marks that pair '
        'invalid (rows {d} of {n}) and leaves it out of both losses. On all {n} official pairs: '
        'softmax_loss {oce:.6f}, rank_loss {orank:.6f}, loss {ol:.6f}; ours {ce:.6f}, {rank:.6f}, '
        '{l:.6f} (differences {dce:.2e}, {drank:.2e}, {dl:.2e}). With the singleton pair left '
        'out of the official formula the rows of C agree.'.format(
            s=SINGLETON_PIDS.index(4), p=int(c.official_pairs[SINGLETON_PIDS.index(4), 1]),
            lp=SINGLETON_PIDS[int(c.official_pairs[SINGLETON_PIDS.index(4), 1])], ls=4,
            d=dropped, n=2 * len(SINGLETON_PIDS), oce=full[0].item(), orank=full[1].item(),
            ol=full[2].item(), ce=c.ce.item(), rank=c.rank.item(), l=c.loss.item(),
            dce=abs(full[0] - c.ce).item(), drank=abs(full[1] - c.rank).item(),
            dl=abs(full[2] - c.loss).item()))
    notes.append(
        'Losses: the official losses are inline in train.py (a Python 2 script, not importable), so '
        'the check computes them from the official outputs line by line (torch\'s CrossEntropyLoss, '
        'Softmax, MarginRankingLoss(margin=0.05) with target 1, loss = softmax_loss + rank_loss) and '
        'verifies those lines are in your clone\'s train.py; the only change is float64 instead of '
        'train.py\'s float32 `torch.zeros(2*batch_size, 200)` buffers. Ours: `pair_cross_entropy` + '
        '`score_ranking_loss` on the `apinet` engine\'s `pair_outputs` (the paper objective, '
        'triplet and ID terms off). Gradients are of each side\'s total loss (A: `backward`; '
        'B, C: `torch.autograd.grad`).')
    notes.append(
        'Integer rows (pairs, labels) show the largest index difference: 0 means identical. Dropout is '
        'off in both networks; BatchNorm in training mode (batch statistics). {:.1f} s, {} torch '
        'threads.'.format(time.perf_counter() - start, torch.get_num_threads()))
    report.notes += [''] + notes
    return report
