"""Benchmark section ``rga`` (``python tools/benchmark.py --sections rga``).

One training step (forward, label-smoothed CE + batch-hard triplet, backward,
SGD step, through the registered ``triplet`` engine) at 256x128 on one fixed
PK batch, for torchreid's ``resnet50`` and ``resnet50_fc512`` and for each RGA
variant computed two ways: ours (:mod:`.modules`, relations factored) and the
oracle (:mod:`.reference`, the official computation with materialised
relation matrices) on the same weights. Batch 8 on the CPU; batch 64 in fp32
and in bf16 autocast when a GPU is present.

Each measurement runs in a fresh process, so its peak memory belongs to that
step alone: CUDA peak allocated on a GPU, growth of the peak resident set on
the CPU. Times are medians of :func:`plugins.median_time`.
"""
import contextlib

import torch

import plugins
from plugins import call_in_subprocess, pk_batch, step_engine, time_with_peak_memory

from .reference import reference_rga

HEIGHT, WIDTH, NUM_CLASSES = 256, 128, 751
RUNS = (  # (label, model name, oracle)
    ('resnet50 (torchreid)', 'resnet50', False),
    ('resnet50_fc512 (torchreid)', 'resnet50_fc512', False),
    ('rga_s_resnet50 oracle', 'rga_s_resnet50', True),
    ('rga_s_resnet50 ours', 'rga_s_resnet50', False),
    ('rga_c_resnet50 oracle', 'rga_c_resnet50', True),
    ('rga_c_resnet50 ours', 'rga_c_resnet50', False),
    ('rga_sc_resnet50 oracle', 'rga_sc_resnet50', True),
    ('rga_sc_resnet50 ours', 'rga_sc_resnet50', False),
)
QUICK_RUNS = (RUNS[0], RUNS[-2], RUNS[-1])


def settings(quick=False):
    """(device, batch, precision, height, width) combinations to measure."""
    if quick:
        return [('cpu', 8, 'fp32', 64, 32)]
    combos = [('cpu', 8, 'fp32', HEIGHT, WIDTH)]
    if torch.cuda.is_available():
        combos += [('cuda', 64, 'fp32', HEIGHT, WIDTH), ('cuda', 64, 'bf16', HEIGHT, WIDTH)]
    return combos


def measure_step(model_name, oracle, device, batch_size, precision, height, width, steps=5):
    """Time and peak memory of one training step; call in a fresh process for the memory figure."""
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    model = plugins.build_model(model_name, NUM_CLASSES, loss='triplet', pretrained=False,
                                use_gpu=device == 'cuda', height=height, width=width).to(device)
    engine = step_engine(model, NUM_CLASSES, 'triplet', use_gpu=device == 'cuda')
    batch = pk_batch(batch_size, height, width, NUM_CLASSES, engine.device)
    engine.set_model_mode('train')
    autocast = (torch.autocast(device, dtype=torch.bfloat16) if precision == 'bf16'
                else contextlib.nullcontext())
    with (reference_rga(model) if oracle else contextlib.nullcontext()), autocast:
        engine.forward_backward(batch)  # first step: allocations, cuDNN choices
        step_s, mem_mib = time_with_peak_memory(lambda: engine.forward_backward(batch), device,
                                                steps, warmup=1, above_current=True)
    return {'step_ms': 1e3 * step_s, 'mem_mib': mem_mib, 'threads': torch.get_num_threads()}


def setting_key(device, batch, precision, height, width):
    return '{} batch {} {} {}x{}'.format(device, batch, precision, height, width)


def run(args, previous, save):
    """Section entry point: ``run(args, previous, save) -> dict`` (resumes a partial result)."""
    quick = getattr(args, 'quick', False)
    result = dict(previous or {})
    tables = result.setdefault('settings', {})
    for combo in settings(quick):
        table = tables.setdefault(setting_key(*combo), {})
        for label, model_name, oracle in (QUICK_RUNS if quick else RUNS):
            if label not in table:
                table[label] = dict(call_in_subprocess(measure_step, model_name, oracle, *combo,
                                                       1 if quick else 5),
                                    model=model_name, oracle=oracle)
                save(result)
    for table in tables.values():
        for label, row in table.items():
            if not row['oracle'] and row['model'].startswith('rga_'):
                oracle_row = table.get(label.replace(' ours', ' oracle'))
                if oracle_row:
                    row['time_vs_oracle'] = row['step_ms'] / oracle_row['step_ms']
                    row['mem_vs_oracle'] = row['mem_mib'] / max(oracle_row['mem_mib'], 1e-9)
            base = table.get(RUNS[0][0])
            if base:
                row['time_vs_resnet50'] = row['step_ms'] / base['step_ms']
    return result


def markdown(result):
    """Markdown tables of a (possibly partial) result."""
    lines = ['## rga: train step, ours vs the official computation (oracle) and torchreid baselines',
             '',
             'One step (forward, CE + triplet, backward, SGD step) on a fixed PK batch, 751 '
             'classes; each row in a fresh process. Memory: CUDA peak allocated above the '
             'resident model and optimiser on a GPU, peak resident-set growth on the CPU.']
    for key, table in result.get('settings', {}).items():
        lines += ['', '**{}** ({} torch threads)'.format(
            key, next(iter(table.values()))['threads'] if table else '?'), '',
            '| model | step (ms) | peak memory (MiB) | time vs oracle | memory vs oracle '
            '| time vs resnet50 |', '|---|---:|---:|---:|---:|---:|']
        for label, row in table.items():
            fmt = lambda k: '{:.2f}x'.format(row[k]) if k in row else ''  # noqa: E731
            lines.append('| {} | {:.0f} | {:.0f} | {} | {} | {} |'.format(
                label, row['step_ms'], row['mem_mib'], fmt('time_vs_oracle'),
                fmt('mem_vs_oracle'), fmt('time_vs_resnet50')))
    return '\n'.join(lines)
