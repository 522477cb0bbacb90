"""DG-Net against the official code (NVlabs/DG-Net): one full training iteration, both sides.

``tools/check_official.py --method dgnet --official-dir CLONE [--iterations 0 30001 30002 40000]``
runs :func:`run`. It builds the official ``DGNet_Trainer`` (``trainer.py``) from the clone's
``configs/latest.yaml`` and our ``dgnet`` engine from ``configs/dgnet/_base_dgnet.yaml`` (the
same recipe), copies every official parameter and buffer of E_a (``ft_netAB``), E_s + MLPs +
G (``AdaINGen``) and D (``MsImageDis``) onto ours through an explicit name mapping
(:func:`official_name`; anything unmapped or misshaped is an error), gives the official
trainer our teacher, and converts everything to float64.

Then, for each requested iteration, in order: the official state (weights, BatchNorm
statistics, optimiser moments and step counts, after the iterations compared before) is
copied onto ours, the warm-up weights and schedulers are set to that iteration, both sides
get the same batch in the official layout (x_a, their positives, x_b, their positives: 2 + 2
pairs at the official 256x128) and run one whole iteration as ``train.py`` does
(learning-rate step, ``forward``, ``dis_update``, ``gen_update``; ours: ``forward_backward``).
Compared: every loss term, the gradients each optimiser stepped with, the parameters after
the step, E_a's BatchNorm statistics and the learning rates.

Float64 needs two things on our side: E_a is converted before its optimiser exists (fused
SGD's momentum buffers are made with the optimiser), and our D step rounds its inputs to
float32 (``engine.discriminator_step_loss``, for fp16 autocast): a forward pre-hook gives D
them back in float64, and the official ``dis_update`` gets the same rounded images. Two
float32 computations remain in ours: the R1 input gradient of those images, and the teacher's
KL (``plugins.TeacherDistillationHook`` casts logits to float32), whose rows and the E_a
gradients it drives agree to about 1e-7 relative instead of round-off.

Shared randomness:

* torch's generator is seeded identically before each side's iteration; both consume it in
  the same order (dropout of E_a's heads on x_a, x_b, xp_a, xp_b, the erasing draws, dropout on
  the erased images and on x_ba, x_ab), so the dropout masks agree;
* random erasing: the official ``to_re`` (a per-image ``RandomErasing`` drawing from Python's
  ``random``, the same distribution as our :func:`~projects.dgnet.engine.random_erase`) is
  replaced by a replay of the masks that our ``random_erase`` draws, at the same point of
  torch's stream, for x_a, x_b, xp_a, xp_b;
* the encoder-again coin: our engine's draw of the iteration is recorded and the official
  ``random.uniform(0, 1)`` returns it (0.0, i.e. "encode again", when our engine drew none:
  its code and cycle weights were 0, so the branch changes nothing the step uses).

``--time`` (:func:`time_iterations`) builds both sides the same way in float32 (on the GPU
when present) and times one iteration of each from the same state and batch, in alternating
rounds, at a CPU batch (2 + 2 pairs) and the official one (8 + 8), at iteration 0 and 40000.

The official modules are imported from the clone only while :func:`run` runs (never when the
project is imported); their deprecation warnings and prints are silenced.
"""
import contextlib
import copy
import io
import os
import random
import re
import tempfile
import warnings
from collections import namedtuple

import torch
import torch.nn as nn

from plugins import (AdversarialStepHook, NoData, Report, TeacherDistillationHook, compare,
                     copy_parameters, time_side_by_side)

from . import engine as dgnet_engine

HEIGHT, WIDTH = 256, 128  # the official input size (E_a doubles images of 128 px or less: scale2)
# Images per official loader batch (official 8): x_a, xp_a, x_b, xp_b of 2 each. Over 2 images,
# E_a's BatchNorm1d (heads) is nearly saturated (outputs +-1) and its backward amplifies round-off
# about a thousandfold: the E_s and G gradients through recon_id then agree to about 1e-9
# relative (1e-11 with 3 or 4 images), still far below the tool's tolerance.
PAIRS = 2
CHECKED_ITERATIONS = (0, 30001, 30002, 40000)
TIMED_ITERATIONS = (0, 40000)
TIMED_BATCHES = (2, 8)  # a CPU size and the official batch (configs/latest.yaml batch_size 8)
NUM_CLASSES = 751  # the official ID_class (Market-1501)
SEED = 0  # our train.seed: its encoder-again coins at 30002 and 40000 take both branches
OUR_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                          'configs', 'dgnet', '_base_dgnet.yaml')

# --------------------------------------------------------------------------------------
# Name mapping: our state-dict key -> the official one, per network
# --------------------------------------------------------------------------------------


def _conv(official):
    return lambda m: official.format(*m.groups())


_ENCODER_NAMES = (  # E_a: our AppearanceEncoder -> official ft_netAB
    (r'trunk\.stem\.0\.', lambda m: 'model.conv1.'),
    (r'trunk\.stem\.1\.', lambda m: 'model.bn1.'),
    (r'trunk\.stages\.([0-3])\.', lambda m: 'model.layer{}.'.format(int(m.group(1)) + 1)),
    (r'primary\.embedding\.([01])\.', _conv('classifier1.add_block.{}.')),
    (r'primary\.classifier\.', lambda m: 'classifier1.classifier.0.'),
    (r'fine\.embedding\.([01])\.', _conv('classifier2.add_block.{}.')),
    (r'fine\.classifier\.', lambda m: 'classifier2.classifier.0.'),
)

_STEM = {1: 0, 5: 1, 9: 2, 13: 3}  # our E_s layer index of each stem convolution -> official block
_TO_IMAGE = {0: '3.conv', 1: '3.norm', 3: '5.conv', 4: '5.norm', 7: '6.conv', 10: '7.conv',
             12: '8.conv'}  # our decoder.to_image index -> official dec.model block
_GENERATOR_NAMES = (  # our Generator -> official AdaINGen
    (r'structure_encoder\.layers\.(1|5|9|13)\.',
     lambda m: 'enc_content.model.{}.conv.'.format(_STEM[int(m.group(1))])),
    (r'structure_encoder\.layers\.(1[6-9])\.body\.([15])\.',
     lambda m: 'enc_content.model.4.model.{}.model.{}.conv.'.format(int(m.group(1)) - 16,
                                                                     int(m.group(2)) // 5)),
    (r'structure_encoder\.layers\.20\.pointwise\.0\.', lambda m: 'enc_content.model.5.conv1.conv.'),
    (r'structure_encoder\.layers\.20\.atrous\.([0-2])\.([04])\.',
     lambda m: 'enc_content.model.5.conv{}.{}.conv.'.format((6, 12, 18)[int(m.group(1))],
                                                            int(m.group(2)) // 4)),
    (r'structure_encoder\.layers\.20\.fuse\.0\.', lambda m: 'enc_content.model.5.fuse.conv.'),
    (r'adain_mlps\.(weight|bias)_mlps\.([0-3])\.([024])\.',
     lambda m: 'mlp_{}{}.model.{}.fc.'.format(m.group(1)[0], int(m.group(2)) + 1,
                                               int(m.group(3)) // 2)),
    (r'decoder\.blocks\.([0-3])\.conv([12])\.1\.',
     lambda m: 'dec.model.1.model.{}.model.{}.conv.'.format(m.group(1), int(m.group(2)) - 1)),
    (r'decoder\.to_image\.(0|1|3|4|7|10|12)\.',
     lambda m: 'dec.model.{}.'.format(_TO_IMAGE[int(m.group(1))])),
)

_DISCRIMINATOR_NAMES = (  # our MultiScaleDiscriminator -> official MsImageDis
    (r'scales\.([0-2])\.(0|3|6|9|12)\.', lambda m: 'cnns.{}.{}.conv.'.format(m.group(1),
                                                                           int(m.group(2)) // 3)),
    (r'scales\.([0-2])\.(1[4-7])\.body\.([14])\.',
     lambda m: 'cnns.{}.{}.model.{}.conv.'.format(m.group(1), int(m.group(2)) - 9,
                                                  int(m.group(3)) // 4)),
    (r'scales\.([0-2])\.18\.', lambda m: 'cnns.{}.9.'.format(m.group(1))),
)

NAME_RULES = {'E_a': _ENCODER_NAMES, 'generator': _GENERATOR_NAMES, 'D': _DISCRIMINATOR_NAMES}

# official tensors with no counterpart in ours, and why nothing is lost
UNUSED_OFFICIAL = {
    'E_a': (r'model\.fc\.(weight|bias)$',
            "torchvision's 1000-way fc, never in ft_netAB's forward (no gradient, never updated)"),
    'generator': (r'dec\.model\.1\.model\.[0-3]\.model\.[01]\.norm\.running_(mean|var)$',
                  "AdaptiveInstanceNorm2d's dummy buffers ('not used': its forward normalises a "
                  'repeated copy)'),
    'D': (r'$^', ''),
}


def official_name(network, name):
    """The official state-dict key of our key ``name`` in ``network`` ('E_a', 'generator' or
    'D'). A function of names only, so tests can check it covers our networks without a clone.
    Raises KeyError for a name with no official counterpart.

    E_a keeps torchvision's names below the mapped prefix; in E_s, G and D a rule maps a whole
    layer, so only the tensor's own name (weight, bias, gamma, beta) may follow it."""
    for pattern, prefix in NAME_RULES[network]:
        match = re.match(pattern, name)
        rest = name[match.end():] if match else ''
        if match and (network == 'E_a' or '.' not in rest):
            return prefix(match) + rest
    raise KeyError('our {} tensor {!r} has no official counterpart'.format(network, name))


def mapped_pairs(network, ours, official):
    """``(our_tensor, official_tensor, our_name)`` for every parameter and buffer of ``ours``.

    Raises ValueError naming every tensor left over on either side (official tensors listed
    in :data:`UNUSED_OFFICIAL` excepted) or mapped twice."""
    our_tensors = ours.state_dict(keep_vars=True)
    their_tensors = official.state_dict(keep_vars=True)
    mapping = {}
    for name in our_tensors:
        key = official_name(network, name)
        if key in mapping:
            raise ValueError('ours {!r} and {!r} both map to official {!r}'.format(mapping[key], name, key))
        mapping[key] = name
    unused = re.compile(UNUSED_OFFICIAL[network][0])
    unmapped = sorted(k for k in set(their_tensors) - set(mapping) if not unused.match(k))
    missing = sorted(mapping[k] for k in set(mapping) - set(their_tensors))
    if unmapped or missing:
        raise ValueError('{}: name mapping incomplete: official tensors without a counterpart in ours: '
                         '{}; our tensors mapped to no official tensor: {}'.format(
                             network, unmapped or 'none', missing or 'none'))
    return [(our_tensors[mapping[key]], their_tensors[key], mapping[key]) for key in mapping]


# --------------------------------------------------------------------------------------
# The two sides
# --------------------------------------------------------------------------------------

def _random_teacher(folder):
    """A torchreid ``resnet50`` teacher, random, its classifier drawn N(0, 0.1) so that its soft
    labels are far from uniform; saved as a checkpoint for ``teacher.weights``."""
    import plugins
    from plugins import save_checkpoint
    torch.manual_seed(1)
    teacher = plugins.build_model('resnet50', NUM_CLASSES, loss='softmax', pretrained=False)
    with torch.no_grad():
        teacher.classifier.weight.normal_(0, 0.1)
    with contextlib.redirect_stdout(io.StringIO()):
        return save_checkpoint({'state_dict': teacher.state_dict()}, folder, name='model.pth.tar-1')


def build_ours(teacher_weights, dtype=torch.float64, pairs=PAIRS, device='cpu'):
    """Our ``dgnet`` engine with the official recipe (``_base_dgnet.yaml``): E_a in ``dtype``
    (set before its optimiser makes momentum buffers), ``pairs`` per half-batch, on ``device``."""
    from torchreid.reid import optim as host_optim

    from plugins import (build_engine, build_lr_scheduler, build_model_from_config, lr_scheduler_kwargs,
                         optimizer_kwargs, setup_config)
    cfg = setup_config(OUR_CONFIG, ['model.pretrained', 'False', 'teacher.weights', teacher_weights,
                                    'train.seed', str(SEED), 'train.batch_size', str(4 * pairs),
                                    'data.height', str(HEIGHT), 'data.width', str(WIDTH)])
    cfg.use_gpu = torch.device(device).type == 'cuda'
    torch.manual_seed(0)
    model = build_model_from_config(cfg, NUM_CLASSES).to(device, dtype)
    optimizer = host_optim.build_optimizer(model, **optimizer_kwargs(cfg))
    scheduler = build_lr_scheduler(optimizer, **lr_scheduler_kwargs(cfg))
    return build_engine(cfg, NoData(NUM_CLASSES), model, optimizer, scheduler)


class _OfficialTeacher(nn.Module):
    """Our teacher as the official code calls its ``ft_net`` teacher: ``(features, logits)``.

    torchreid's ResNet returns logits only with its own ``training`` flag set; the official
    code puts the teacher in eval mode with BatchNorm in training mode (``train_bn``), so the
    flag is set for the call and every layer keeps the mode the official code gave it.
    ``model`` is there for the official ``teacher.model.fc = nn.Sequential()``."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.model = nn.Module()

    def forward(self, x):
        training, self.net.training = self.net.training, True
        try:
            logits, features = self.net(x)
        finally:
            self.net.training = training
        return features, logits


@contextlib.contextmanager
def _quiet():
    """The official code prints every loss and warns about deprecated arguments."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter('ignore')
        yield


class _Coin:
    """Stands in for ``random`` in the official ``trainer`` module: ``uniform(0, 1)`` returns our
    engine's encoder-again draw of the iteration."""

    def __init__(self):
        self.value = None
        self.used = []

    def uniform(self, low, high):
        value = 0.0 if self.value is None else self.value
        self.used.append(value)
        return low + (high - low) * value


class _RecordingRandom:
    """Stands in for ``random`` in our engine module for one iteration: the same generators,
    their draws recorded."""

    def __init__(self):
        self.draws = []

    def Random(self, seed):  # noqa: N802 (the name of random.Random)
        rng, draws = random.Random(seed), self.draws

        class Recorded:
            def random(self):
                value = rng.random()
                draws.append(value)
                return value
        return Recorded()


def _erasing_replay(pending):
    """The official ``DGNet_Trainer.to_re`` replaced: our ``random_erase`` draws the masks of
    x_a, x_b, xp_a, xp_b on the first call of the iteration (the point of torch's stream where
    our engine draws them), each call fills its batch's masked pixels with 0 (the official
    ``RandomErasing(mean=[0, 0, 0])`` fill), in the input's dtype."""
    def to_re(trainer, x):
        if not pending:
            ones = torch.ones((4 * x.size(0),) + tuple(x.shape[1:]), dtype=x.dtype)
            pending.extend(dgnet_engine.random_erase(ones, trainer.erasing_p).eq(0).chunk(4))
        return x.masked_fill(pending.pop(0), 0)
    return to_re


def build_official(code, teacher):
    """The official ``DGNet_Trainer`` from ``configs/latest.yaml``, with our teacher."""
    import yaml
    with open(os.path.join(code.root, 'configs', 'latest.yaml')) as f:
        hyper = yaml.safe_load(f)
    for beta in ('beta1', 'beta2'):  # latest.yaml's beta1 is the int 0, which torch's Adam now refuses
        if not isinstance(hyper[beta], float):
            code.patches.append('`configs/latest.yaml` {0}: {1!r} read as {2!r} (torch.optim.Adam '
                                'refuses an int beta next to a float one)'.format(beta, hyper[beta],
                                                                                 float(hyper[beta])))
            hyper[beta] = float(hyper[beta])
    with _quiet():
        trainer = code.module('trainer')
    code.patch(trainer, 'load_config', lambda name: {},
               "no ./models/<teacher>/opts.yaml: the teacher is ours (next patch)")
    code.patch(trainer, 'load_network', lambda network, name: _OfficialTeacher(copy.deepcopy(teacher)),
               "instead of ./models/{}/net_last.pth: our engine's teacher (a random torchreid resnet50, "
               "the same weights), called as the official ft_net teacher: (features, logits)".format(
                   hyper['teacher']))
    with _quiet():
        official = trainer.DGNet_Trainer(hyper)
    return trainer, official, hyper


# --------------------------------------------------------------------------------------
# One iteration
# --------------------------------------------------------------------------------------

WARM_UPS = (('recon_f_w', 'max_w', 'warm_iter'), ('recon_s_w', 'max_w', 'warm_iter'),
            ('recon_x_cyc_w', 'max_cyc_w', 'warm_iter'), ('teacher_w', 'max_teacher_w', 'warm_teacher_iter'))


def set_official_weights(hyper, initial, iteration):
    """The official warm-up weights at the start of ``iteration``: the official ``gen_update``
    increments, replayed for iterations 0 .. iteration - 1 from the config's initial values."""
    for name, cap, start in WARM_UPS:
        weight = initial[name]
        for it in range(hyper[start] + 1, iteration):  # gen_update adds warm_scale when it > start
            weight = min(weight + hyper['warm_scale'], hyper[cap])
        hyper[name] = weight


def synchronise(pairs, optimizers):
    """The official state onto ours: weights, buffers (BatchNorm statistics) and every
    optimiser's per-parameter state (SGD momentum, Adam moments and step counts)."""
    for network in pairs:
        copy_parameters(pairs[network])
    for network, (ours, theirs) in optimizers.items():
        for o, t, _ in pairs[network]:
            if isinstance(o, nn.Parameter) and theirs.state.get(t):
                ours.state[o] = {k: v.clone() if torch.is_tensor(v) else v for k, v in theirs.state[t].items()}


def _set_schedulers(schedulers, steps):
    """Every scheduler as after ``steps`` steps (torch's closed form of its rate)."""
    for scheduler in schedulers:
        scheduler.last_epoch = steps
        for group, lr in zip(scheduler.optimizer.param_groups, scheduler._get_closed_form_lr()):
            group['lr'] = lr


def make_batch(iteration, pairs=PAIRS, dtype=torch.float64, device='cpu'):
    """x_a, xp_a, x_b, xp_b (normalised-image scale) and the labels l_a, l_b."""
    g = torch.Generator().manual_seed(iteration)
    images = torch.randn(4, pairs, 3, HEIGHT, WIDTH, generator=g, dtype=dtype)
    labels = torch.randperm(NUM_CLASSES, generator=g)[:2 * pairs].view(2, pairs)
    return images.to(device), labels.to(device)


def _float32_rounded(x):
    return x.detach().float().to(x.dtype)


def _inputs_to_parameter_dtype(module, args):
    """Forward pre-hook on our D: its float32-rounded inputs back in D's float64."""
    dtype = next(module.parameters()).dtype
    return tuple(a.to(dtype) if torch.is_tensor(a) and a.is_floating_point() else a for a in args)


def run_official(official, hyper, images, labels, iteration, seed):
    x_a, xp_a, x_b, xp_b = (x.clone() for x in images)
    l_a, l_b = labels
    torch.manual_seed(seed)
    with _quiet():
        official.update_learning_rate()
        outputs = official.forward(x_a, x_b, xp_a, xp_b)
        x_ab, x_ba = outputs[:2]
        # our D step rounds its inputs to float32 (engine.discriminator_step_loss): D sees the
        # same rounded images on the official side
        official.dis_update(*(_float32_rounded(x) for x in (x_ab, x_ba, x_a, x_b)), hyper, num_gpu=1)
        d_grads = {id(p): None if p.grad is None else p.grad.clone() for p in official.dis_a.parameters()}
        official.gen_update(*outputs, x_a, x_b, xp_a, xp_b, l_a, l_b, hyper, iteration, num_gpu=1)
    return d_grads


def run_ours(engine, images, labels, iteration, seed):
    x_a, xp_a, x_b, xp_b = images
    anchors, positives = torch.cat([x_a, x_b]), torch.cat([xp_a, xp_b])
    data = {'img': torch.stack([anchors, positives], 1).flatten(0, 1),  # (anchor, positive) pairs
            'pid': torch.cat(list(labels)).repeat_interleave(2),
            'camid': torch.zeros(2 * len(anchors), dtype=torch.long)}
    engine.epoch, engine.num_batches, engine.batch_idx = 0, iteration + 1, iteration
    recorder, module_random = _RecordingRandom(), dgnet_engine.random
    dgnet_engine.random = recorder
    torch.manual_seed(seed)
    try:
        summary = engine.forward_backward(data)
    finally:
        dgnet_engine.random = module_random
    return summary, recorder.draws


def _official_terms(official, hyper):
    """The official weighted terms (weights as in ``loss_gen_total``), named as ours."""
    h = hyper
    return [
        ('recon_x', 'recon_x_w * (loss_gen_recon_x_a + loss_gen_recon_x_b)',
         h['recon_x_w'] * (official.loss_gen_recon_x_a + official.loss_gen_recon_x_b)),
        ('recon_xp', 'recon_xp_w * (loss_gen_recon_xp_a + _b)',
         h['recon_xp_w'] * (official.loss_gen_recon_xp_a + official.loss_gen_recon_xp_b)),
        ('recon_s', 'recon_s_w * (loss_gen_recon_s_a + _b)',
         h['recon_s_w'] * (official.loss_gen_recon_s_a + official.loss_gen_recon_s_b)),
        ('recon_f', 'recon_f_w * (loss_gen_recon_f_a + _b)',
         h['recon_f_w'] * (official.loss_gen_recon_f_a + official.loss_gen_recon_f_b)),
        ('recon_cyc', 'recon_x_cyc_w * (loss_gen_cycrecon_x_a + _b)',
         h['recon_x_cyc_w'] * (official.loss_gen_cycrecon_x_a + official.loss_gen_cycrecon_x_b)),
        ('id', 'id_w * loss_id', h['id_w'] * official.loss_id),
        ('pid', 'pid_w * loss_pid', h['pid_w'] * official.loss_pid),
        ('recon_id', 'recon_id_w * loss_gen_recon_id', h['recon_id_w'] * official.loss_gen_recon_id),
        ('discriminator_adv', 'gan_w * (loss_gen_adv_a + loss_gen_adv_b)',
         h['gan_w'] * (official.loss_gen_adv_a + official.loss_gen_adv_b)),
        (('teacher_kl', 'fine'), 'teacher_w * loss_teacher (T_w KL + B_w loss_B)',
         h['teacher_w'] * official.loss_teacher),
    ]


def _as_tensor(value):
    return value.detach() if torch.is_tensor(value) else torch.tensor(float(value), dtype=torch.float64)


def loss_rows(summary, official, hyper):
    rows, total = [], 0
    for ours, theirs, value in _official_terms(official, hyper):
        names = ours if isinstance(ours, tuple) else (ours,)
        mine = sum((summary[n] for n in names if n in summary), torch.zeros((), dtype=torch.float64))
        total = total + mine
        label = ' + '.join('`{}`{}'.format(n, '' if n in summary else ' (not computed)') for n in names)
        rows.append(compare('{} vs official {}'.format(label, theirs), mine, _as_tensor(value)))
    rows.append(compare('sum of the terms vs official loss_gen_total', total, official.loss_gen_total))
    rows.append(compare('`discriminator_loss` vs official loss_dis_total (LSGAN + R1, a and b)',
                        summary['discriminator_loss'], official.loss_dis_total))
    return rows


GROUPS = (('E_a trunk', 'E_a', 'trunk.'), ('E_a primary head', 'E_a', 'primary.'),
          ('E_a fine-grained head', 'E_a', 'fine.'), ('E_s', 'generator', 'structure_encoder.'),
          ('AdaIN MLPs', 'generator', 'adain_mlps.'), ('G (decoder)', 'generator', 'decoder.'),
          ('D', 'D', ''))


def _grad(p, official_d_grads=None):
    grad = official_d_grads[id(p)] if official_d_grads is not None and id(p) in official_d_grads else p.grad
    return torch.zeros_like(p) if grad is None else grad


def state_rows(pairs, d_grads):
    """Rows of the gradients each optimiser stepped with and of the parameters after the step,
    per network part, and of E_a's BatchNorm statistics (D's official gradients: ``d_grads``,
    taken after ``dis_update``, before ``gen_update`` adds the generator side's to them)."""
    grads, params = [], []
    for title, network, prefix in GROUPS:
        chosen = [(o, t) for o, t, name in pairs[network]
                  if name.startswith(prefix) and isinstance(o, nn.Parameter)]
        grads.append(compare('{} ({} tensors)'.format(title, len(chosen)), [_grad(o) for o, _ in chosen],
                             [_grad(t, d_grads if network == 'D' else None) for _, t in chosen]))
        params.append(compare(title, [o for o, _ in chosen], [t for _, t in chosen]))
    stats = []
    for buffer in ('running_mean', 'running_var', 'num_batches_tracked'):
        chosen = [(o, t) for o, t, name in pairs['E_a'] if name.endswith(buffer)]
        stats.append(compare('E_a {} ({} BatchNorm layers)'.format(buffer, len(chosen)),
                             [o for o, _ in chosen], [t for _, t in chosen]))
    return grads, params, stats


def lr_rows(pairs, optimizers):
    """The learning rate each mapped parameter was stepped with, ours vs official, per network."""
    rows = []
    for network, (ours, theirs) in optimizers.items():
        def rates(optimizer):
            return {id(p): g['lr'] for g in optimizer.param_groups for p in g['params']}
        mine, official = rates(ours), rates(theirs)
        chosen = [(o, t) for o, t, _ in pairs[network] if isinstance(o, nn.Parameter)]
        rows.append(compare('{} ({} parameters)'.format(network, len(chosen)),
                            torch.tensor([mine[id(o)] for o, _ in chosen], dtype=torch.float64),
                            torch.tensor([official[id(t)] for _, t in chosen], dtype=torch.float64)))
    return rows


Sides = namedtuple('Sides', ['engine', 'trainer', 'official', 'hyper', 'pairs', 'optimizers'])


def build_sides(code, dtype=torch.float64, pairs=PAIRS, device='cpu'):
    """Our engine and the official trainer in ``dtype`` on ``device``, the official weights
    mapped onto ours (``pairs`` images per official loader batch)."""
    with tempfile.TemporaryDirectory() as folder:
        engine = build_ours(_random_teacher(folder), dtype, pairs, device)
    teacher_hook = next(h for h in engine.hooks if isinstance(h, TeacherDistillationHook))
    adversarial = next(h for h in engine.hooks if isinstance(h, AdversarialStepHook))
    encoder, generator, discriminator = engine.model, engine.generator, adversarial.discriminator
    for net in (encoder, generator, discriminator, teacher_hook.teacher):
        net.to(device, dtype)
    if dtype == torch.float64:
        discriminator.register_forward_pre_hook(_inputs_to_parameter_dtype)
    trainer, official, hyper = build_official(code, teacher_hook.teacher)
    if hyper['ID_class'] != NUM_CLASSES:
        raise ValueError('configs/latest.yaml has ID_class {}, the check {}'.format(hyper['ID_class'], NUM_CLASSES))
    official.to(device, dtype)
    pairs = {'E_a': mapped_pairs('E_a', encoder, official.id_a),
             'generator': mapped_pairs('generator', generator, official.gen_a),
             'D': mapped_pairs('D', discriminator, official.dis_a)}
    optimizers = {'E_a': (engine._optims['model'], official.id_opt),
                  'generator': (engine._optims['generator'], official.gen_opt),
                  'D': (engine._optims['discriminator'], official.dis_opt)}
    engine.set_model_mode('train')
    return Sides(engine, trainer, official, hyper, pairs, optimizers)


def start_iteration(sides, initial, iteration):
    """Both sides at the start of ``iteration``: schedulers, warm-up weights, the official
    state copied onto ours."""
    if iteration < 0:
        raise ValueError('--iterations must be non-negative, got {}'.format(iteration))
    official = sides.official
    _set_schedulers(sides.engine._scheds.values(), iteration)
    _set_schedulers((official.dis_scheduler, official.gen_scheduler, official.id_scheduler), iteration)
    set_official_weights(sides.hyper, initial, iteration)
    synchronise(sides.pairs, sides.optimizers)


def run(code, args):
    report = Report()
    sides = build_sides(code)
    engine, trainer, official, hyper, pairs, optimizers = sides
    pending, coin = [], _Coin()
    code.patch(trainer.DGNet_Trainer, 'to_re', _erasing_replay(pending),
               "random erasing: replays the masks our random_erase draws (same distribution as the "
               "official RandomErasing, same draws on both sides); keeps the input's dtype "
               "(the official builds a float32 tensor)")
    code.patch(trainer, 'random', coin, "the encoder-again coin random.uniform(0, 1) returns our engine's "
               'draw of the iteration')
    count = sum(len(p) for p in pairs.values())
    initial = dict(hyper)
    branches = []
    iterations = args.iterations or CHECKED_ITERATIONS
    for iteration in iterations:
        start_iteration(sides, initial, iteration)
        images, labels = make_batch(iteration)
        seed = 1000 + iteration

        summary, draws = run_ours(engine, images, labels, iteration, seed)
        coin.value, coin.used = (draws[0] if draws else None), []
        pending.clear()
        d_grads = run_official(official, hyper, images, labels, iteration, seed)
        if pending or len(draws) > 1 or len(coin.used) != 1:
            raise RuntimeError('iteration {}: {} erasing masks left unused, {} coins drawn by ours and {} '
                               'by the official code (expected 0, at most 1 and 1)'.format(
                                   iteration, len(pending), len(draws), len(coin.used)))
        branches.append('{}: {}'.format(iteration, 'no coin (code and cycle weights 0)' if not draws else
                                        '{:.3f}, {}'.format(draws[0], 'E_s learns on detached fakes'
                                                            if draws[0] <= 0.5 else 'frozen E_s')))
        grads, params, stats = state_rows(pairs, d_grads)
        title = 'Iteration {}'.format(iteration)
        report.table(title + ': loss terms (weighted as in the total)', loss_rows(summary, official, hyper))
        report.table(title + ': gradients of the step (per network part)', grads)
        report.table(title + ': parameters after the step', params)
        report.table(title + ": E_a's BatchNorm statistics after the step", stats)
        report.table(title + ': learning rates of the step', lr_rows(pairs, optimizers))

    report.notes += [
        'Float64 on both sides, one iteration each at {} (in this order), batch {} + {} (image, '
        'positive) pairs at {}x{}, {} classes. Before each iteration the official state (weights, '
        'BatchNorm statistics, optimiser moments and step counts) is copied onto ours: {} official '
        'tensors mapped onto ours (unused official ones: E_a {}; G {}).'.format(
            ', '.join(map(str, iterations)), PAIRS, PAIRS, HEIGHT, WIDTH, NUM_CLASSES, count,
            UNUSED_OFFICIAL['E_a'][1], UNUSED_OFFICIAL['generator'][1]),
        '', 'Shared randomness: torch seeded alike before each side (dropout masks; erasing masks drawn '
        'by our random_erase and replayed in the official to_re); encoder-again coin (our train.seed {}) '
        'per iteration: {}.'.format(SEED, '; '.join(branches)),
        '', "The teacher is ours in both (a random torchreid resnet50), in the official trainer called "
        "as its ft_net teacher; the official teacher is in eval mode with BatchNorm in training mode "
        "('train_bn'), as before its first sample() (which leaves it in training mode).",
        '', 'Float32 inside ours: our D step rounds its inputs to float32 (a pre-hook gives D them back '
        'in float64; the official dis_update gets the same rounded images), so the R1 input gradient is '
        "float32; the teacher's KL is float32 (plugins.TeacherDistillationHook casts the logits), so "
        "the teacher rows and the E_a gradients it drives agree to about 1e-7 relative."]
    return report


def time_iterations(code, args):
    """``--time``: the official iteration and ours from the same state and batch, in float32,
    on the GPU when present, at each ``--batch`` (images per official loader batch) and
    iteration (default 0, before any warm-up, and 40000, every term and the teacher on)."""
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    report = Report()
    for pairs in args.batch or TIMED_BATCHES:
        sides = build_sides(code, torch.float32, pairs, device)
        initial = dict(sides.hyper)
        rows = []
        for iteration in args.iterations or TIMED_ITERATIONS:
            start_iteration(sides, initial, iteration)
            images, labels = make_batch(iteration, pairs, torch.float32, device)
            rows.append(time_side_by_side(
                'iteration {}'.format(iteration),
                lambda: run_official(sides.official, sides.hyper, images, labels, iteration, 0),
                lambda: run_ours(sides.engine, images, labels, iteration, 0), args.rounds, device))
        report.timing('One training iteration (D step, then E_a + E_s/G), batch {0} + {0} '
                      'image/positive pairs at {1}x{2}, float32, on {3}'.format(
                          pairs, HEIGHT, WIDTH, torch.cuda.get_device_name(device)
                          if device.type == 'cuda' else 'CPU ({} threads)'.format(
                              torch.get_num_threads())), rows)
        sides = None  # this batch size's networks go before the next are built
    report.notes.append(
        'Both sides start each iteration from the same weights, optimiser state and learning '
        'rates, with the same batch, and run once untimed; then {} rounds alternate which side '
        'goes first. Medians; the ratio is the median of the per-round ratios. Memory: the '
        'most tensor memory one iteration holds at once above what was allocated before it '
        '(CUDA allocator statistics on a GPU, the profiler\'s allocation records on a CPU). '
        'The official side runs unpatched but for the teacher '
        '(ours, a random torchreid resnet50) and the run-time patches listed below.'.format(
            args.rounds))
    return report
