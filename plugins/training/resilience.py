"""Training that loses nothing: signals, RNG state, non-finite losses, finding the last checkpoint.

* :class:`StopOnSignal`: SIGINT/SIGTERM only raise a flag; the engine finishes the
  running step, saves every network, optimiser, scheduler and hook with the
  epoch, iteration and RNG state, and raises :class:`TrainingInterrupted`. A
  second SIGINT interrupts at once.
* :func:`rng_state` / :func:`set_rng_state`: python, numpy, torch (and this
  process's CUDA device) RNG states as tensors and lists, so checkpoints stay
  ``weights_only`` loadable and resume with any number of visible GPUs.
* :func:`latest_checkpoint`: what ``model.resume auto`` (``--resume auto``) picks:
  the newest checkpoint in ``save_dir`` that loads completely, skipping corrupt
  or incomplete ones with a message.

Checkpoint files are ``model.pth.tar-N`` after N finished epochs and
``model.pth.tar-N+iterI`` when stopped after I iterations of epoch N+1.
"""
import contextlib
import glob
import os.path as osp
import random
import re
import signal
import warnings

import numpy as np
import torch

from plugins.training.checkpoint import load_checkpoint

_TAG = re.compile(r'^model\.pth\.tar-(\d+)(?:\+iter(\d+))?$')


class TrainingInterrupted(Exception):
    """Training stopped on a signal after saving a checkpoint (``.signum``, ``.path``)."""

    def __init__(self, signum, path):
        super().__init__('Stopped by {} after saving "{}"; resume with model.resume {} '
                         '(or --resume auto)'.format(signal.Signals(signum).name, path, path))
        self.signum = signum
        self.path = path


class NonFiniteLossError(RuntimeError):
    """Too many steps in a row had a non-finite loss; a checkpoint was saved first."""


class StopOnSignal:
    """Within the block, SIGINT/SIGTERM set :attr:`signum` instead of killing the process.

    Handlers are only installed from the main thread and are restored on exit.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum = None
        self._previous = {}

    def _handle(self, signum, frame):
        # no printing here: the signal may interrupt a write to the same stream
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.signum = signum

    def __enter__(self):
        self.signum = None
        try:
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self._previous = {}
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def rng_state():
    """Every RNG a training step can draw from, as checkpoint-safe values."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        'python': random.getstate(),
        'numpy': {'kind': kind, 'keys': torch.from_numpy(keys.astype(np.int64)), 'pos': int(pos),
                  'has_gauss': int(has_gauss), 'gauss': float(gauss)},
        'torch': torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state()  # this process's GPU (one per rank)
    return state


NONDETERMINISTIC = ' does not have a deterministic implementation'


@contextlib.contextmanager
def nondeterministic_kernels_reported(once=True):
    """With ``train.deterministic``, print which kernels of the block have no deterministic
    implementation on this device (torch only warns, ``warn_only=True``).

    The engine wraps each epoch's first step: a resumed run repeats an
    uninterrupted one's losses exactly only when nothing is printed (always on CPU;
    on CUDA, for example, not with bilinear interpolation's or ``roi_align``'s
    backward, CASN, or ``ReflectionPad2d``'s backward, DG-Net). Other warnings pass.
    """
    if not (once and torch.are_deterministic_algorithms_enabled()
            and torch.is_deterministic_algorithms_warn_only_enabled()):
        yield
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        yield
    kernels = sorted({str(w.message).split(NONDETERMINISTIC)[0] for w in caught
                      if NONDETERMINISTIC in str(w.message)})
    for w in caught:
        if NONDETERMINISTIC not in str(w.message):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if kernels:
        print('train.deterministic: {} ran without a deterministic implementation on this '
              'device, so a resumed run\'s losses will differ slightly from an uninterrupted '
              'run\'s'.format(', '.join(kernels)), flush=True)


def _as_tuples(value):
    """``random.setstate`` needs tuples where a checkpoint may hold lists."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def set_rng_state(state):
    random.setstate(_as_tuples(state['python']))
    n = state['numpy']
    np.random.set_state((n['kind'], n['keys'].numpy().astype(np.uint32), n['pos'], n['has_gauss'],
                         n['gauss']))
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        cuda = state['cuda']
        if isinstance(cuda, (list, tuple)):  # older checkpoints: every visible GPU's state
            cuda = cuda[min(torch.cuda.current_device(), len(cuda) - 1)]
        torch.cuda.set_rng_state(cuda)


def checkpoint_name(epoch, iteration=0):
    """File name of a checkpoint after ``epoch`` epochs and ``iteration`` more steps."""
    return 'model.pth.tar-{}'.format(epoch if not iteration else '{}+iter{}'.format(epoch, iteration))


def checkpoint_position(path):
    """``(epoch, iteration)`` encoded in a checkpoint's file name, or None."""
    match = _TAG.match(osp.basename(path))
    return (int(match.group(1)), int(match.group(2) or 0)) if match else None


def latest_checkpoint(save_dir, network_names=('model',)):
    """Path of the newest complete checkpoint of the main model in ``save_dir``, or None.

    Candidates are tried newest first; one is taken only if the main file and the
    same-named file of every other network load (weights-only) and hold a
    ``state_dict``. Corrupt or missing ones are reported and skipped.
    """
    found = []
    for path in glob.glob(osp.join(save_dir, 'model', 'model.pth.tar-*')):
        position = checkpoint_position(path)
        if position is not None:
            found.append((position, path))
    for _, path in sorted(found, reverse=True):
        name = osp.basename(path)
        try:
            for net in network_names:
                ckpt = load_checkpoint(osp.join(save_dir, net, name))
                if 'state_dict' not in ckpt:
                    raise KeyError('no state_dict')
            return path
        except Exception as err:  # corrupt, truncated, foreign: never resume from it
            print('Skipping checkpoint "{}" for resuming: {}: {}'.format(
                path, type(err).__name__, err))
    return None
