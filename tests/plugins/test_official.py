"""The official-code check framework: imports from a clone on a CPU offline, and leaves no trace."""
import sys

import pytest
import torch
import torch.nn as nn

import plugins

from plugins.benchmarking import official
from plugins.benchmarking.official import Report, compare, official_code
from tests.helpers import load_tool

FAKE_OFFICIAL = '''
import torch
import torchvision.models as models

on_gpu = torch.ones(2).cuda() * 3            # official code that assumes a GPU
trunk = models.resnet18(pretrained=True)     # and downloads ImageNet weights
net = torch.nn.Linear(2, 1).cuda()
'''


def test_official_code_runs_on_a_cpu_offline_and_is_forgotten_afterwards(tmp_path):
    (tmp_path / 'fake_official_model.py').write_text(FAKE_OFFICIAL)
    cuda_before, module_cuda_before, path_before = torch.Tensor.cuda, nn.Module.cuda, list(sys.path)
    with official_code(str(tmp_path)) as code:
        module = code.module('fake_official_model')
        assert module.on_gpu.device.type == 'cpu' and module.on_gpu.tolist() == [3.0, 3.0]
        assert isinstance(module.trunk, nn.Module)
        patches = list(code.patches)
        with pytest.raises(RuntimeError, match='offline'):
            torch.hub.load_state_dict_from_url('https://example.com/w.pth')
    assert any('cuda' in p for p in patches) and any('resnet18' in p for p in patches)
    assert 'fake_official_model' not in sys.modules
    assert torch.Tensor.cuda is cuda_before and nn.Module.cuda is module_cuda_before
    assert sys.path == path_before


def test_compare_reports_the_largest_difference_and_refuses_other_shapes():
    row = compare('x', torch.tensor([1.0, 2.0, 3.5]), torch.tensor([1.0, 2.5, 3.0]))
    assert (row.max_abs_diff, row.max_abs_value) == (0.5, 3.0)
    with pytest.raises(ValueError, match='shape'):
        compare('x', torch.zeros(3), torch.zeros(4))
    report = Report()
    report.table('t', [row, compare('y', torch.tensor([10.0]), torch.tensor([20.0]))])
    assert report.worst() == pytest.approx(0.5)  # 10 / max(20, 1), above 0.5 / max(3, 1)
    assert '| x | 5.00e-01 | 3 |' in report.markdown()


def test_time_side_by_side_alternates_the_order_and_pairs_ratios_by_round(monkeypatch):
    calls, clock, cpu_clock = [], [0.0], [0.0]
    durations = {'official': iter([9.0, 2.0, 1.0, 4.0, 2.0]), 'ours': iter([9.0, 1.0, 0.5, 1.0, 3.0])}
    # user CPU time: twice the wall time on the official side, equal to it on ours
    cpu_per_second = {'official': 2.0, 'ours': 1.0}

    def side(name):
        def run():
            calls.append(name)
            seconds = next(durations[name])
            clock[0] += seconds
            cpu_clock[0] += cpu_per_second[name] * seconds
        return run
    official_side, ours_side = side('official'), side('ours')
    monkeypatch.setattr(official.time, 'perf_counter', lambda: clock[0])
    monkeypatch.setattr(official, 'user_cpu_seconds', lambda: cpu_clock[0])
    monkeypatch.setattr(official, 'peak_cpu_tensor_mib', lambda fn: 7.0 if fn is official_side else 5.0)
    row = official.time_side_by_side('it', official_side, ours_side, rounds=4, device='cpu')
    # one untimed call each, then rounds: official first, ours first, official first, ours first
    assert calls == ['official', 'ours', 'official', 'ours', 'ours', 'official', 'official', 'ours',
                     'ours', 'official']
    assert (row.official_s, row.ours_s) == (2.0, 1.0)  # medians of 2, 1, 4, 2 and of 1, .5, 1, 3
    assert row.ratio == 0.5  # median of the rounds' 1/2, .5/1, 1/4, 3/2
    assert row.cpu_ratio == 0.25  # median of 1/4, .5/2, 1/8, 3/4
    assert (row.official_peak_mib, row.ours_peak_mib) == (7.0, 5.0)
    assert '| it | 2.000 | 1.000 | 0.50 | 7 | 5 | 0.25 |' in _timing_report(row)


def test_a_call_too_short_for_the_cpu_clock_has_no_cpu_time_ratio(monkeypatch):
    monkeypatch.setattr(official, 'user_cpu_seconds', lambda: 5.0)  # the clock never advances
    monkeypatch.setattr(official, 'peak_cpu_tensor_mib', lambda fn: 1.0)
    row = official.time_side_by_side('it', lambda: None, lambda: None, rounds=2, device='cpu')
    assert row.cpu_ratio is None and row.ratio > 0
    assert _timing_report(row).splitlines()[-1].endswith('| 1 | 1 |  |')


def _timing_report(row):
    report = Report()
    report.timing('t', [row])
    return report.markdown()


def test_peak_cpu_tensor_memory_is_the_most_held_at_once():
    def fn():
        a = torch.ones(1024, 1024)  # 4 MiB
        b = a * 2  # 8 MiB held
        del a
        c = torch.ones(2048, 1024)  # 4 + 8 = 12 MiB held
        return float(b.sum() + c.sum())
    assert official.peak_cpu_tensor_mib(fn) == pytest.approx(12.0, abs=0.1)


def test_time_is_refused_for_a_method_without_a_timing(capsys):
    untimed = [n for n in plugins.OFFICIAL_CHECKS.names() if plugins.OFFICIAL_CHECKS.get(n).time_ref is None]
    if not untimed:
        pytest.skip('every installed official check has a timing')
    with pytest.raises(SystemExit):
        load_tool('check_official').parse_args(['--method', untimed[0], '--official-dir', '.', '--time'])
    assert '--time' in capsys.readouterr().err
