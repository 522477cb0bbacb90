"""tools/benchmark.py's models section on a tiny generated dataset."""
import json
import os

import pytest
from PIL import Image

import plugins

from plugins.benchmarking import sections as benchmarking
from plugins.evaluation import protocol as evaluation
from plugins.benchmarking.measure import interleaved_times, median_time
from plugins.benchmarking.sections import train_for_budget
from plugins.training.resilience import latest_checkpoint
from plugins.training.launch import setup_config, start_run
from tests.helpers import REPO, TINY_SYNTHREID, load_tool

CONFIGS = [os.path.join(REPO, 'configs', 'baselines', name)
           for name in ('resnet50_synthreid.yaml', 'resnet50_triplet_synthreid.yaml')]
TINY = TINY_SYNTHREID + ['data.height', '32', 'data.width', '16', 'data.workers', '0',
                         'train.batch_size', '8', 'test.batch_size', '16', 'model.name', 'resnet18']
RUN_KEYS = ('rank1', 'rank5', 'mAP', 'mINP', 'train_s', 'train_img_s', 'params', 'gflops',
            'gmacs', 'train_step_s', 'train_step_mem_mib', 'infer_torch_img_s', 'infer_onnx_img_s', 'eval_s')


def test_models_section_writes_every_figure_and_resumes(tmp_path, capsys):
    tool = load_tool('benchmark')
    argv = ['--sections', 'models', '--configs', *CONFIGS, '--epochs', '1', '--root',
            str(tmp_path / 'data'), '--out-dir', str(tmp_path / 'out'), '--opts', *TINY]
    tool.main(argv)
    report = json.loads((tmp_path / 'out' / 'benchmark.json').read_text())
    assert {'torch', 'device', 'torch_threads', 'command'} <= set(report['meta'])
    runs = report['sections']['models']['runs']
    assert set(runs) == {'resnet50_synthreid', 'resnet50_triplet_synthreid'}
    for run in runs.values():
        assert run['status'] == 'done' and run['epochs_done'] == 1
        for key in RUN_KEYS:
            assert isinstance(run[key], (int, float)) and run[key] >= 0, key
        assert 0 <= run['rank1'] <= run['rank5'] <= 1 and run['params'] > 1e6
        assert run['train_step_mem_mib'] > 0
        # the same weights with flip and re-ranking, read back from the run's metrics.jsonl
        lines = evaluation.read_metrics(run_dir(tmp_path, run), 'test')
        assert [(line['options']['flip'], line['options']['rerank']) for line in lines] == [
            (flip, rerank) for _, flip, rerank in benchmarking.EVALUATION_VARIANTS]
        for line, (label, _, _) in zip(lines, benchmarking.EVALUATION_VARIANTS):
            suffix = '_' + label if label else ''
            assert run['rank1' + suffix] == line['rank1'] and run['mAP' + suffix] == line['mAP']
    markdown = (tmp_path / 'out' / 'benchmark.md').read_text()
    assert '| config | model | Rank-1 (%)' in markdown and 'resnet50_triplet_synthreid' in markdown
    assert '| config | plain | flip | re-rank | flip + re-rank |' in markdown
    with Image.open(tmp_path / 'out' / 'benchmark.png') as image:
        assert image.format == 'PNG' and image.size[0] > 400

    capsys.readouterr()
    tool.main(argv + ['--resume'])
    assert capsys.readouterr().out.count('done in an earlier run') == 2
    again = json.loads((tmp_path / 'out' / 'benchmark.json').read_text())['sections']['models']
    assert again['runs'] == runs


def run_dir(tmp_path, run):
    return str(tmp_path / 'out' / 'runs' / os.path.splitext(os.path.basename(run['config']))[0])


def test_rerank_section_runs_both_implementations_apart_and_agrees():
    result = benchmarking.bench_rerank(20, 60, dim=16)
    assert result['max_abs_diff'] < 1e-5
    for side in ('host', 'ours'):
        assert result[side]['s'] > 0 and result[side]['peak_mib'] > 0
    assert '| ours |' in benchmarking.markdown_rerank(result)


def test_training_budget_resumes_from_the_latest_checkpoint(tmp_path):
    run_dir = str(tmp_path / 'run')
    opts = TINY + ['train.max_epoch', '2', 'data.save_dir', run_dir]
    cfg = setup_config(CONFIGS[0], opts, root=str(tmp_path / 'data'))

    def stop_after_first_epoch(state):
        raise KeyboardInterrupt

    state = {}
    with pytest.raises(KeyboardInterrupt):
        train_for_budget(start_run(cfg, verbose=False), cfg, 2, run_dir, state,
                         on_epoch=stop_after_first_epoch)
    assert state['epochs_done'] == 1 and latest_checkpoint(run_dir).endswith('-1')

    epochs_seen = []
    state = {'train_s': state['train_s']}
    train_for_budget(start_run(cfg, verbose=False), cfg, 2, run_dir, state,
                     on_epoch=lambda s: epochs_seen.append(s['epochs_done']))
    assert epochs_seen == [2] and state['epochs_done'] == 2
    assert latest_checkpoint(run_dir).endswith('-2')
    assert not os.path.exists(os.path.join(run_dir, 'model', 'model.pth.tar-1'))  # stale removed


def test_call_in_subprocess_returns_the_child_result_and_reports_a_dead_child():
    import math

    from plugins.benchmarking.measure import call_in_subprocess
    assert call_in_subprocess(os.getpid) != os.getpid()
    assert call_in_subprocess(math.hypot, 3.0, 4.0) == 5.0
    with pytest.raises(RuntimeError, match='sqrt failed in its subprocess'):
        call_in_subprocess(math.sqrt, -1.0)


def test_models_section_lists_a_config_it_cannot_build_and_goes_on(tmp_path):
    """DG-Net's config needs a trained teacher: the comparison records why it did not run it
    (no cell is filled) instead of stopping."""
    dgnet = os.path.join(REPO, 'configs', 'dgnet', 'dgnet_resnet50_synthreid.yaml')
    if 'dgnet' not in plugins.load_projects():
        pytest.skip('the dgnet project is not installed')
    load_tool('benchmark').main(['--sections', 'models', '--configs', dgnet, '--epochs', '1',
                                 '--root', str(tmp_path / 'data'), '--out-dir', str(tmp_path / 'out'),
                                 '--opts', *TINY[:-2], 'data.height', '80', 'data.width', '40'])
    run = json.loads((tmp_path / 'out' / 'benchmark.json').read_text())['sections']['models']['runs'][
        'dgnet_resnet50_synthreid']
    assert run['status'] == 'not run' and 'teacher.weights' in run['error'] and 'rank1' not in run
    markdown = (tmp_path / 'out' / 'benchmark.md').read_text()
    assert 'Not run:' in markdown and '- dgnet_resnet50_synthreid: ' in markdown


def test_interleaved_times_alternate_the_order_and_pair_ratios_by_round(monkeypatch):
    """On a fake clock: fn 1 costs twice fn 0, and a slow spell in round 2 doubles both."""
    clock, calls = [0.0], []
    monkeypatch.setattr(benchmarking.time, 'perf_counter', lambda: clock[0])

    def costing(k, cost):
        def fn():
            calls.append(k)
            clock[0] += cost * (2 if len(calls) in (5, 6) else 1)  # round 2 (warm-up is round 0)
        return fn

    medians, ratios = interleaved_times([costing(0, 1.0), costing(1, 2.0)], steps=3, warmup=1)
    assert calls == [0, 1, 1, 0, 0, 1, 1, 0]  # each round starts with the next function
    assert medians == [1.0, 2.0] and ratios == [1.0, 2.0]
    calls.clear()
    assert median_time(costing(0, 1.0), steps=3, warmup=2) == 1.0 and len(calls) == 5
