"""Checks against a method's official code, run from the user's own clone of it.

A project registers a check (:func:`register_official_check`): which repository it
expects, files that identify a clone of it, and a function that builds the official
networks next to ours, maps the official weights onto ours and returns measured
differences. ``tools/check_official.py --method NAME --official-dir PATH`` runs it.

Nothing of the official code is copied here: :func:`official_code` imports it from
PATH, with the few run-time patches it needs on a CPU without internet, each listed
in the report (:class:`OfficialCode.patches`).
"""
import contextlib
import importlib
import os
import resource
import sys
import time
from collections import namedtuple

import numpy as np
import torch
import torch.nn as nn

from plugins.registry import OFFICIAL_CHECKS

Row = namedtuple('Row', ['what', 'max_abs_diff', 'max_abs_value'])
Row.__doc__ = """One compared quantity: the largest absolute difference between ours and the
official value, and the largest absolute official value (the scale of the difference)."""


class Report:
    """Measured rows, grouped in titled tables, and free-form notes."""

    def __init__(self):
        self.tables = []  # (title, [Row])
        self.timings = []  # (title, [TimingRow])
        self.notes = []

    def timing(self, title, rows):
        self.timings.append((title, list(rows)))

    def table(self, title, rows):
        self.tables.append((title, list(rows)))

    def markdown(self):
        lines = []
        for title, rows in self.tables:
            lines += ['**{}**'.format(title), '', '| compared | max abs difference | max abs value |',
                      '|---|---:|---:|']
            lines += ['| {} | {:.2e} | {:.3g} |'.format(*row) for row in rows]
            lines.append('')
        for title, rows in self.timings:
            lines += ['**{}**'.format(title), '', '| | official (s) | ours (s) | ours / official '
                      '| official peak (MiB) | ours peak (MiB) | ours / official, user CPU time |',
                      '|---|---:|---:|---:|---:|---:|---:|']
            formats = ('{}', '{:.3f}', '{:.3f}', '{:.2f}', '{:.0f}', '{:.0f}', '{:.2f}')
            lines += ['| {} |'.format(' | '.join('' if value is None else fmt.format(value)
                                                 for fmt, value in zip(formats, row)))
                      for row in rows]
            lines.append('')
        return '\n'.join(lines + self.notes)

    def worst(self):
        """The largest relative difference over all rows (difference / max(value, 1))."""
        return max((row.max_abs_diff / max(row.max_abs_value, 1.0)
                    for _, rows in self.tables for row in rows), default=0.0)


TimingRow = namedtuple('TimingRow', ['what', 'official_s', 'ours_s', 'ratio', 'official_peak_mib',
                                     'ours_peak_mib', 'cpu_ratio'])
TimingRow.__doc__ = """Median seconds of each side, the median over rounds of ours / official,
each side's largest peak memory over the rounds (above what was allocated before), and on a
CPU the median over rounds of ours / official in user CPU time (None on a GPU)."""


def user_cpu_seconds():
    """CPU time this process (all its threads) has spent in user mode: the computation, without
    the kernel's time (page faults, memory mapping) that wall time on a CPU also holds."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_utime


def time_side_by_side(what, official, ours, rounds, device):
    """A :class:`TimingRow`: ``official()`` and ``ours()`` run once untimed, then in
    ``rounds`` alternating rounds (the order flips every round, so a slow spell of a shared
    machine hits both alike). Memory: the peak of the tensor memory a call allocates above
    what was allocated before it (CUDA's allocator statistics over the rounds on a GPU; on a
    CPU one more call of each under the profiler's memory accounting)."""
    cuda = torch.device(device).type == 'cuda'

    def measured(fn):
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        start, cpu_start = time.perf_counter(), user_cpu_seconds()
        fn()
        if cuda:
            torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2 ** 20 if cuda else None
        return time.perf_counter() - start, user_cpu_seconds() - cpu_start, peak

    official(), ours()
    results = {'official': [], 'ours': []}
    sides = [('official', official), ('ours', ours)]
    for r in range(rounds):
        for name, fn in sides if r % 2 == 0 else sides[::-1]:
            results[name].append(measured(fn))

    def column(k):  # measured() returns (seconds, user CPU seconds, peak)
        return {name: [m[k] for m in values] for name, values in results.items()}
    times, cpu_times = column(0), column(1)
    peaks = ({name: max(values) for name, values in column(2).items()} if cuda
             else {name: peak_cpu_tensor_mib(fn) for name, fn in sides})

    def ratio(of):
        """Median of the rounds' ours / official; None when an official call took no measurable
        time (user CPU time advances in clock ticks)."""
        if min(of['official']) <= 0:
            return None
        return float(np.median([o / t for o, t in zip(of['ours'], of['official'])]))
    return TimingRow(what, float(np.median(times['official'])), float(np.median(times['ours'])),
                     ratio(times), peaks['official'], peaks['ours'], None if cuda else ratio(cpu_times))


def peak_cpu_tensor_mib(fn):
    """The most CPU tensor memory (MiB) that ``fn()`` holds at once above what was allocated
    before it, from the profiler's allocation records (the CPU's ``max_memory_allocated``).
    Blocks allocated before the call and freed during it (the last step's gradients) have no
    record and are not subtracted, so both sides of a comparison are counted alike, a little high."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    live = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        # an operator's own allocations less its frees; '[memory]' records belong to no operator
        live += event.cpu_memory_usage if event.name == '[memory]' else event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak / 2 ** 20


def compare(what, ours, official):
    """A :class:`Row` for two tensors (or lists/tuples of tensors) of equal shapes."""
    ours, official = _flat(ours), _flat(official)
    if ours.shape != official.shape:
        raise ValueError('{}: our shape {} differs from the official {}'.format(
            what, tuple(ours.shape), tuple(official.shape)))
    return Row(what, (ours - official).abs().max().item() if ours.numel() else 0.0,
               official.abs().max().item() if official.numel() else 0.0)


def _flat(value):
    if isinstance(value, (list, tuple)):
        return torch.cat([_flat(v) for v in value]) if value else torch.zeros(0, dtype=torch.float64)
    return value.detach().reshape(-1).to(torch.float64)


def gradient_rows(prefix, pairs):
    """Rows comparing the gradients of ``(our_parameter, official_parameter, name)`` triples."""
    return [compare('{} grad {}'.format(prefix, name), ours.grad, theirs.grad)
            for ours, theirs, name in pairs]


def copy_parameters(pairs):
    """Copy official tensors onto ours: ``pairs`` of ``(ours, official, name)``, shapes checked."""
    with torch.no_grad():
        for ours, theirs, name in pairs:
            if ours.shape != theirs.shape:
                raise ValueError('cannot map official {} {} onto ours {}'.format(
                    name, tuple(theirs.shape), tuple(ours.shape)))
            ours.copy_(theirs)


def check_clone(path, name):
    """The absolute clone folder of check ``name``'s repository, or a ValueError naming
    what is missing and what is expected."""
    check = OFFICIAL_CHECKS.get(name)
    root = os.path.abspath(os.path.expanduser(path))
    if not os.path.isdir(root):
        raise ValueError('--official-dir {!r} is not a folder; expected a clone of '
                         'https://github.com/{}'.format(path, check.repository))
    missing = [m for m in check.markers if not os.path.exists(os.path.join(root, m))]
    if missing:
        raise ValueError('--official-dir {!r} is not a clone of https://github.com/{}: it has no {} '
                         '(a clone has {})'.format(path, check.repository, ', '.join(missing),
                                                   ', '.join(check.markers)))
    return root


class OfficialCode:
    """Imports modules from an official clone; collects the run-time patches applied."""

    def __init__(self, root):
        self.root = root
        self.patches = []
        self._stack = contextlib.ExitStack()

    def module(self, name):
        """Import ``name`` (dotted, relative to the clone's root) from the clone."""
        return importlib.import_module(name)

    def patch(self, owner, attribute, value, why):
        """Replace ``owner.attribute`` by ``value`` until the check ends; listed with ``why``."""
        missing = object()
        old = getattr(owner, attribute, missing)
        setattr(owner, attribute, value)
        self.patches.append('`{}.{}`: {}'.format(getattr(owner, '__name__', type(owner).__name__),
                                                 attribute, why))

        def restore():
            if old is missing:
                delattr(owner, attribute)
            else:
                setattr(owner, attribute, old)
        self._stack.callback(restore)


@contextlib.contextmanager
def official_code(root, device='cpu'):
    """:class:`OfficialCode` for the clone at ``root``, with the patches every official
    code base here needs offline: on a CPU ``device``, ``.cuda()`` is a no-op; torchvision's
    constructors never download ImageNet weights (the check maps weights anyway), and
    NumPy 2's removed aliases ``np.float``/``np.int``/``np.bool`` exist. Afterwards the
    patches are undone and the clone's modules are forgotten (their names, such as
    ``models`` or ``utils``, are generic)."""
    code = OfficialCode(root)
    before = set(sys.modules)
    sys.path.insert(0, root)
    try:
        with code._stack:
            if torch.device(device).type == 'cpu':
                for owner in (torch.Tensor, nn.Module):
                    code.patch(owner, 'cuda', lambda self, *a, **k: self,
                               'no-op: the check runs on a CPU')
            for alias, value in (('float', float), ('int', int), ('bool', bool)):
                if not hasattr(np, alias):
                    code.patch(np, alias, value, 'alias removed in NumPy 2')
            _no_downloads(code)
            yield code
    finally:
        sys.path.remove(root)
        for name in set(sys.modules) - before:
            module = sys.modules.get(name)
            if (getattr(module, '__file__', None) or '').startswith(root + os.sep):
                del sys.modules[name]


def _no_downloads(code):
    """torchvision constructors called with ``pretrained=True``/``weights=`` build untrained
    networks, and URL loads fail loudly: nothing is downloaded."""
    import torchvision.models as tv_models

    def untrained(constructor):
        def build(*args, pretrained=False, weights=None, **kwargs):
            return constructor(*args, weights=None, **kwargs)
        return build
    for name in ('resnet18', 'resnet34', 'resnet50', 'resnet101', 'resnet152', 'vgg16', 'vgg19'):
        code.patch(tv_models, name, untrained(getattr(tv_models, name)),
                   'built without ImageNet weights (no download; weights are mapped)')

    def refuse(url, *args, **kwargs):
        raise RuntimeError('the official code asked to download {}; the check runs offline'.format(url))
    code.patch(torch.hub, 'load_state_dict_from_url', refuse, 'downloads refused (offline)')
    code.patch(torch.utils.model_zoo, 'load_url', refuse, 'downloads refused (offline)')
