"""The built-in sections of ``tools/benchmark.py``: models, engine, evaluation, re-ranking.

A section is ``run(args, previous, save) -> dict`` plus ``markdown(dict) -> str``;
projects add their own (e.g. a module against its reference implementation)
with :func:`plugins.registry.register_benchmark`. ``previous`` is the section's result from an
earlier, unfinished run (or None) and ``save(partial)`` records progress in the
benchmark's JSON, so long sections can resume.
"""
import glob
import importlib.util
import os
import os.path as osp
import time
import warnings

import numpy as np
import torch
from torchreid.reid.utils import compute_model_complexity

from plugins.benchmarking.measure import (call_in_subprocess, median_time, peak_rss_mib, reset_peak_rss,
                                          time_with_peak_memory)
from plugins.benchmarking.steps import pk_batch
from plugins.evaluation.protocol import evaluate_rank_full, read_metrics
from plugins.nn.flops import count_macs
from plugins.training.resilience import latest_checkpoint
from plugins.registry import register_benchmark


def measure_costs(engine, cfg, onnx_path=None, steps=5):
    """Parameters, FLOPs, train-step time and memory, inference speed (PyTorch, onnxruntime).

    Train-step memory is the CUDA peak on a GPU; on the CPU it is the growth of
    the process's peak resident memory over the timed steps, so run this in a
    fresh process (``tools/benchmark.py`` does) for a meaningful figure.
    """
    model, device = engine.model, engine.device
    h, w, bs = cfg.data.height, cfg.data.width, cfg.train.batch_size
    model.eval()
    params, flops = compute_model_complexity(model, (1, 3, h, w))
    macs = count_macs(model, (1, 3, h, w))
    sync = torch.cuda.synchronize if device.type == 'cuda' else None
    batch = pk_batch(bs, h, w, engine.datamanager.num_train_pids, device, cfg.sampler.num_instances)

    engine.set_model_mode('train')
    step_s, step_mem = time_with_peak_memory(lambda: engine.forward_backward(batch), device, steps)

    engine.set_model_mode('eval')
    with torch.no_grad():
        infer_s = median_time(lambda: model(batch['img']), steps=steps, sync=sync)
    result = {'params': int(params), 'gflops': flops / 1e9, 'gmacs': macs / 1e9,
              'train_step_s': step_s,
              'train_step_mem_mib': step_mem, 'train_step_mem_kind': (
                  'cuda peak allocated' if device.type == 'cuda' else 'CPU peak RSS growth'),
              'infer_batch': bs, 'infer_torch_img_s': bs / infer_s}
    if onnx_path is not None:
        result['infer_onnx_img_s'] = bs / onnx_inference_time(model.cpu(), cfg, onnx_path,
                                                               batch['img'].cpu(), steps)
        model.to(device)
    return result


def onnx_inference_time(model, cfg, path, images, steps=5):
    import onnxruntime as ort

    from plugins.export import export_onnx

    export_onnx(model, path, cfg.data.height, cfg.data.width, cfg.data.norm_mean,
                cfg.data.norm_std, model_name=cfg.model.name)
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    feed = {session.get_inputs()[0].name: images.numpy()}
    return median_time(lambda: session.run(None, feed), steps=steps)


# The evaluation options the models section compares on the same weights: (label, flip, rerank).
EVALUATION_VARIANTS = (('', False, False), ('flip', True, False), ('rerank', False, True),
                       ('flip_rerank', True, True))


def evaluate_engine(engine, cfg, run_dir):
    """Rank-1/5/10, mAP and mINP of the engine's model on its first target dataset, with and
    without ``test.flip`` and ``test.rerank`` (keys suffixed ``_flip``, ``_rerank``,
    ``_flip_rerank``), each timed. The numbers are read back from the lines the engine's
    evaluation appends to ``<run_dir>/metrics.jsonl``, the table's one source."""
    from plugins.config import evaluation_kwargs

    name = list(engine.test_loader.keys())[0]
    engine.test_loader = {name: engine.test_loader[name]}
    result = {'dataset': name}
    for label, flip, rerank in EVALUATION_VARIANTS:
        start = time.perf_counter()
        engine.test(save_dir=run_dir, **dict(evaluation_kwargs(cfg), flip=flip, rerank=rerank))
        line = read_metrics(run_dir, 'test')[-1]
        suffix = '_' + label if label else ''
        result.update({key + suffix: float(line[key])
                       for key in ('rank1', 'rank5', 'rank10', 'mAP', 'mINP')})
        result['eval_s' + suffix] = time.perf_counter() - start
    return result


def rerank_cost(num_query, num_gallery, dim, implementation, seed=0):
    """Seconds and peak resident memory (MiB, this process) of one re-ranking of random
    features; run it in a subprocess (:func:`call_in_subprocess`). Returns the distances too."""
    from torchreid.reid.utils import re_ranking as host_re_ranking

    from plugins.evaluation.rerank import HOST_DISTANCE, re_ranking

    generator = torch.Generator().manual_seed(seed)
    query = torch.randn(num_query, dim, generator=generator)
    gallery = torch.randn(num_gallery, dim, generator=generator)
    reset_peak_rss()
    before = peak_rss_mib()
    start = time.perf_counter()
    if implementation == 'host':
        distances = host_re_ranking(*(HOST_DISTANCE(a, b).numpy() for a, b in (
            (query, gallery), (query, query), (gallery, gallery))))
    else:
        distances = re_ranking(query, gallery).numpy()
    return {'s': time.perf_counter() - start, 'peak_mib': peak_rss_mib(),
            'peak_above_start_mib': peak_rss_mib() - before, 'distances': distances}


def bench_rerank(num_query, num_gallery, dim=2048, seed=0):
    """The host's ``re_ranking`` and ours on the same random features, one process each."""
    host = call_in_subprocess(rerank_cost, num_query, num_gallery, dim, 'host', seed)
    ours = call_in_subprocess(rerank_cost, num_query, num_gallery, dim, 'ours', seed)
    return {'num_query': num_query, 'num_gallery': num_gallery, 'dim': dim,
            'max_abs_diff': float(np.abs(host.pop('distances') - ours.pop('distances')).max()),
            'host': host, 'ours': ours}


def markdown_rerank(result):
    host, ours = result['host'], result['ours']
    return '\n'.join([
        '## rerank: k-reciprocal re-ranking (k1 20, k2 6, lambda 0.3)',
        '',
        'Random {num_query} query x {num_gallery} gallery features of dimension {dim}, '
        'each implementation in its own process; peak resident memory of that process. '
        'Host: torchreid `re_ranking` on its three distance matrices; ours: '
        '`plugins.evaluation.rerank.re_ranking` from the features, in row chunks.'.format(**result),
        '',
        '| | time (s) | peak memory (MiB) |',
        '|---|---:|---:|',
        '| host | {:.1f} | {:.0f} |'.format(host['s'], host['peak_mib']),
        '| ours | {:.1f} | {:.0f} |'.format(ours['s'], ours['peak_mib']),
        '',
        'Largest difference between the two re-ranked matrices: {:.2g}.'.format(
            result['max_abs_diff']),
    ])


register_benchmark('rerank', lambda args, previous, save: bench_rerank(
    args.num_query, args.num_gallery, seed=args.seed), markdown_rerank)


MARKET_SIZE = (3368, 15913)


def make_rank_problem(num_query, num_gallery, seed=0, dim=64, num_cams=6):
    """A Market-1501-like retrieval problem from random features.

    Gallery: ~17.5 images per identity (751 identities at Market scale), 17.5%
    distractors with pid 0, 6 cameras. Features are identity centre + camera
    offset + noise, so rankings are neither trivial nor random and same-camera
    matches (which the protocol removes) are ranked high, as in real data.
    Returns squared euclidean distances (torchreid's default) in float32.
    """
    rng = np.random.RandomState(seed)
    num_distractors = int(round(0.1755 * num_gallery))
    num_labelled = num_gallery - num_distractors
    num_ids = max(2, min(751, int(num_labelled / 17.5)))
    g_pids = np.concatenate([
        np.arange(1, num_ids + 1),  # every identity has gallery images
        rng.randint(1, num_ids + 1, num_labelled - num_ids),
        np.zeros(num_distractors, dtype=np.int64),
    ])
    q_pids = rng.randint(1, num_ids + 1, num_query)
    g_camids = rng.randint(0, num_cams, num_gallery)
    q_camids = rng.randint(0, num_cams, num_query)

    centres = rng.randn(num_ids + 1, dim)
    cam_offsets = 0.6 * rng.randn(num_cams, dim)

    def features(pids, camids):
        f = centres[pids] + cam_offsets[camids] + 0.7 * rng.randn(pids.size, dim)
        distractor = pids == 0
        f[distractor] = 1.2 * rng.randn(int(distractor.sum()), dim)
        return f.astype(np.float32)

    qf, gf = features(q_pids, q_camids), features(g_pids, g_camids)
    distmat = (qf ** 2).sum(1)[:, None] + (gf ** 2).sum(1)[None, :] - 2 * qf @ gf.T
    return distmat, q_pids, g_pids, q_camids, g_camids


def load_pristine_host_rank():
    """A fresh copy of torchreid's ``metrics/rank.py``.

    Importing ``plugins`` routes the host's metric functions to ours, so the
    reference must come from a copy that no fix has touched.
    """
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # the host warns that its Cython metric is missing
        import torchreid.reid.metrics

        path = os.path.join(os.path.dirname(torchreid.reid.metrics.__file__), 'rank.py')
        spec = importlib.util.spec_from_file_location('_pristine_torchreid_rank', path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module


def bench_evaluation(num_query, num_gallery, seed=0, max_rank=50, repeats=3):
    """Host Python ``eval_market1501`` (run once) vs ours (best of ``repeats``)."""
    host_rank = load_pristine_host_rank()
    problem = make_rank_problem(num_query, num_gallery, seed=seed)
    start = time.perf_counter()
    host_cmc, host_map = host_rank.eval_market1501(*problem, max_rank)
    host_s = time.perf_counter() - start

    ours_s = float('inf')
    for _ in range(repeats):
        start = time.perf_counter()
        ours = evaluate_rank_full(*problem, max_rank=max_rank)
        ours_s = min(ours_s, time.perf_counter() - start)

    cmc_diff = float(np.abs(host_cmc - ours['cmc']).max())
    map_diff = float(abs(host_map - ours['mAP']))
    return {
        'num_query': num_query,
        'num_gallery': num_gallery,
        'max_rank': max_rank,
        'host_s': host_s,
        'ours_s': ours_s,
        'ours_repeats': repeats,
        'speedup': host_s / ours_s,
        'max_abs_diff_cmc': cmc_diff,
        'abs_diff_mAP': map_diff,
        'max_abs_diff': max(cmc_diff, map_diff),
        'rank1': float(ours['cmc'][0]),
        'mAP': float(ours['mAP']),
        'mINP': float(ours['mINP']),
    }


def markdown_evaluation(result):
    return '\n'.join([
        '## evaluation: Market-1501 protocol (CMC + mAP)',
        '',
        'Problem: {num_query} x {num_gallery}, max_rank {max_rank}; rank-1 {rank1:.4f}, '
        'mAP {mAP:.4f}, mINP {mINP:.4f}. Host: torchreid Python `eval_market1501` '
        '(run once); ours: `plugins.evaluation.protocol`, best of {ours_repeats}.'.format(**result),
        '',
        '| host (s) | ours (s) | speed-up | max abs diff CMC | abs diff mAP |',
        '|---:|---:|---:|---:|---:|',
        '| {host_s:.2f} | {ours_s:.3f} | {speedup:.1f}x | {max_abs_diff_cmc:.3g} | '
        '{abs_diff_mAP:.3g} |'.format(**result),
    ])


register_benchmark('evaluation', lambda args, previous, save: bench_evaluation(
    args.num_query, args.num_gallery, seed=args.seed), markdown_evaluation)


def train_for_budget(engine, cfg, epochs, run_dir, state, on_epoch=None):
    """Train with the host's per-epoch ``train()``, checkpointing each epoch so a run can resume.

    ``state`` holds ``epochs_done`` and ``train_s`` (carried over from an earlier,
    interrupted run); it is updated in place and passed to ``on_epoch``.
    """
    checkpoint = latest_checkpoint(run_dir, engine.get_model_names())
    start = engine.resume(checkpoint) if checkpoint else 0
    state['epochs_done'] = start
    state.setdefault('train_s', 0.0)
    engine.max_epoch = epochs
    images_per_epoch = len(engine.train_loader) * cfg.train.batch_size
    for engine.epoch in range(start, epochs):
        tic = time.perf_counter()
        engine.train(print_freq=10 ** 9, fixbase_epoch=cfg.train.fixbase_epoch,
                     open_layers=cfg.train.open_layers)
        state['train_s'] += time.perf_counter() - tic
        state['epochs_done'] = engine.epoch + 1
        engine.save_model(engine.epoch, 0.0, run_dir)
        for stale in glob.glob(osp.join(run_dir, '*', 'model.pth.tar-{}'.format(engine.epoch))):
            os.remove(stale)  # keep only the latest checkpoint of each network
        if on_epoch is not None:
            on_epoch(state)
    state['train_img_s'] = images_per_epoch * epochs / max(state['train_s'], 1e-9)
    return state


def costs_of_config(config_file, opts, root, onnx_path):
    """:func:`measure_costs` of a config's freshly built run (call it in a subprocess)."""
    from plugins.training.launch import setup_config, start_run

    cfg = setup_config(config_file, opts, root=root)
    return measure_costs(start_run(cfg, verbose=False), cfg, onnx_path)


def measure_costs_in_subprocess(config_file, opts, root, onnx_path):
    return call_in_subprocess(costs_of_config, config_file, list(opts), root, onnx_path)


def config_name(path):
    return osp.splitext(osp.basename(path))[0]


def run_opts(args, run_dir):
    """Overrides that give every config the same budget, dataset and output folder."""
    opts = list(args.opts) + ['train.max_epoch', str(args.epochs), 'data.save_dir', run_dir,
                              'test.evaluate', 'False', 'model.resume', '']
    if args.dataset:
        opts += ['data.sources', args.dataset, 'data.targets', args.dataset]
    return opts


def bench_models(args, previous, save):
    """Train every config for the same epochs, then evaluate and measure its costs."""
    from plugins.training.launch import setup_config, start_run

    result = previous or {'epochs': args.epochs, 'dataset': args.dataset or 'each config\'s own',
                          'runs': {}}
    if result['epochs'] != args.epochs:
        raise ValueError('The saved benchmark used {} epochs, not {}: use another --out-dir'.format(
            result['epochs'], args.epochs))
    for index, config_file in enumerate(args.configs):
        name = config_name(config_file)
        entry = result['runs'].setdefault(name, {'config': config_file, 'status': 'pending'})
        if entry['status'] == 'done':
            print('[{}/{}] {}: done in an earlier run'.format(index + 1, len(args.configs), name))
            continue
        run_dir = osp.join(args.out_dir, 'runs', name)
        opts = run_opts(args, run_dir)
        try:
            cfg = setup_config(config_file, opts, root=args.root)
            engine = start_run(cfg, verbose=False)
        except (KeyError, TypeError, ValueError, FileNotFoundError) as err:  # e.g. DG-Net's teacher
            entry.update(status='not run', error=str(err.args[0] if err.args else err))
            print('[{}/{}] {}: not run: {}'.format(index + 1, len(args.configs), name, entry['error']))
            save(result)
            continue
        entry['model'] = cfg.model.name

        def progress(state):
            entry['status'] = 'training'
            print('[{}/{}] {}: epoch {}/{} ({:.0f} s)'.format(index + 1, len(args.configs), name,
                                                             state['epochs_done'], args.epochs,
                                                             state['train_s']), flush=True)
            save(result)

        train_for_budget(engine, cfg, args.epochs, run_dir, entry, on_epoch=progress)
        entry.update(evaluate_engine(engine, cfg, run_dir))
        del engine
        onnx_path = osp.join(run_dir, name + '.onnx') if args.onnx else None
        entry.update(measure_costs_in_subprocess(config_file, opts, args.root, onnx_path))
        entry['status'] = 'done'
        result['dataset'] = args.dataset or ', '.join(sorted(
            {run['dataset'] for run in result['runs'].values() if 'dataset' in run}))
        print('[{}/{}] {}: Rank-1 {:.1%}, mAP {:.1%}'.format(index + 1, len(args.configs), name,
                                                             entry['rank1'], entry['mAP']), flush=True)
        save(result)
    return result


MODEL_COLUMNS = (
    ('config', '{}'), ('model', '{}'), ('Rank-1 (%)', '{:.1f}'), ('Rank-5 (%)', '{:.1f}'),
    ('mAP (%)', '{:.1f}'), ('mINP (%)', '{:.1f}'), ('train (s)', '{:.0f}'),
    ('train img/s', '{:.1f}'), ('params (M)', '{:.2f}'), ('host GMACs', '{:.2f}'),
    ('GMACs', '{:.2f}'),
    ('step (ms)', '{:.0f}'), ('step mem (MiB)', '{:.0f}'), ('infer img/s torch', '{:.0f}'),
    ('infer img/s onnx', '{:.0f}'), ('eval (s)', '{:.1f}'),
)


def _model_row(name, run):
    values = [name, run.get('model', '?'), 100 * run.get('rank1', np.nan),
              100 * run.get('rank5', np.nan), 100 * run.get('mAP', np.nan),
              100 * run.get('mINP', np.nan), run.get('train_s', np.nan),
              run.get('train_img_s', np.nan), run.get('params', np.nan) / 1e6,
              run.get('gflops', np.nan), run.get('gmacs', np.nan),
              1000 * run.get('train_step_s', np.nan),
              run.get('train_step_mem_mib', np.nan), run.get('infer_torch_img_s', np.nan),
              run.get('infer_onnx_img_s', np.nan), run.get('eval_s', np.nan)]
    cells = []
    for (_, fmt), value in zip(MODEL_COLUMNS, values):
        missing = isinstance(value, float) and np.isnan(value)
        cells.append('not run' if missing else fmt.format(value))
    return '| ' + ' | '.join(cells) + ' |'


def markdown_models(result):
    runs = result['runs']
    kinds = {run.get('train_step_mem_kind') for run in runs.values()} - {None}
    lines = ['## models: same budget ({} epochs), dataset {}'.format(result['epochs'],
                                                                      result['dataset']),
             '',
             'Train time and img/s cover the whole budget; step and memory are one training '
             'step at the config\'s batch size ({}); inference is a batch of the same size. '
             'Params and host GMACs are torchreid\'s `compute_model_complexity` in eval mode: it '
             'counts the layers it hooks as they are called, so it misses weights a module reads '
             'without calling their layer and matrix products (RGA\'s relations). GMACs are '
             'counted by `torch.utils.flop_counter` over the same eval forward: every '
             'convolution, matrix product and attention kernel that runs (`plugins.nn.flops`). '
             'Training-only heads are in neither.'.format(
                 ', '.join(sorted(kinds)) or 'not measured'),
             '',
             '| ' + ' | '.join(c for c, _ in MODEL_COLUMNS) + ' |',
             '|' + '---|' * 2 + '---:|' * (len(MODEL_COLUMNS) - 2)]
    lines += [_model_row(name, run) for name, run in runs.items() if run['status'] != 'not run']
    lines += ['', 'The same weights evaluated with `test.flip` (mean of each image\'s and its '
              'mirror\'s feature) and `test.rerank` (k-reciprocal), Rank-1 / mAP (%):', '',
              '| config | plain | flip | re-rank | flip + re-rank |', '|---|---:|---:|---:|---:|']
    lines += ['| {} | {} |'.format(name, ' | '.join(
        '{:.1f} / {:.1f}'.format(100 * run['rank1' + suffix], 100 * run['mAP' + suffix])
        if 'rank1' + suffix in run else 'not run'
        for suffix in ('_' + label if label else '' for label, _, _ in EVALUATION_VARIANTS)))
        for name, run in runs.items() if run['status'] != 'not run']
    lines += ['', 'Not run:'] if any(run['status'] == 'not run' for run in runs.values()) else []
    lines += ['- {}: {}'.format(name, run['error']) for name, run in runs.items()
              if run['status'] == 'not run']
    return '\n'.join(lines)


register_benchmark('models', bench_models, markdown_models)


class _Capped:
    """The first ``n`` batches of a loader, with the loader's ``len`` and ``sampler`` contract."""

    def __init__(self, loader, n):
        self.loader, self.n = loader, min(n, len(loader))
        self.sampler = loader.sampler

    def __len__(self):
        return self.n

    def __iter__(self):
        for i, batch in enumerate(self.loader):
            if i == self.n:
                return
            yield batch


ENGINE_SIZES = {'gpu': (256, 128, 64), 'cpu': (128, 64, 32), 'quick': (64, 32, 16)}


def bench_engine(args, previous, save):
    """torchreid's ``ImageTripletEngine`` against ours on the same model, data and losses.

    Real Market-1501 when ``--root`` is given (``--dataset`` picks another), else
    the embedded synthreid. ``resnet50``, CE (label smoothing) + triplet at weight 1, PK batches of 4
    images per identity, Adam; real images through the same loader. Reports the
    time per training iteration of each engine's own epoch loop (data loading,
    logging every 20 steps to TensorBoard, LR bookkeeping) and of the bare step on
    a batch already on the device, and checks that both engines compute the same
    losses on the same first batch from the same weights.
    """
    import copy
    import tempfile

    from torch.utils.tensorboard import SummaryWriter
    from torchreid.reid.engine import ImageTripletEngine

    from plugins.training.launch import build_datamanager, setup_config
    from plugins.training.builders import build_engine
    from plugins.nn.models import build_model

    if previous and previous.get('status') == 'done':
        return previous
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    h, w, bs = ENGINE_SIZES['gpu' if device == 'cuda' else ('quick' if args.quick else 'cpu')]
    iters = 4 if args.quick else 40
    dataset = args.dataset or ('market1501' if args.root else 'synthreid')
    cfg = setup_config('', ['data.sources', dataset, 'data.targets', dataset, 'data.height', str(h),
                            'data.width', str(w), 'train.batch_size', str(bs), 'loss.name', 'triplet',
                            'loss.triplet.weight_x', '1.0', 'sampler.train_sampler',
                            'RandomIdentitySampler', 'data.transforms', "['random_flip']",
                            'data.workers', str(min(8, os.cpu_count() or 1)), 'model.pretrained',
                            'False', 'train.print_freq', '20'] + list(args.opts), root=args.root)
    datamanager = build_datamanager(cfg)
    torch.manual_seed(args.seed)
    model = build_model('resnet50', datamanager.num_train_pids, loss='triplet', pretrained=False)
    engines = {}
    for name in ('torchreid', 'ours'):
        net = copy.deepcopy(model).to(device)
        optimizer = torch.optim.Adam(net.parameters(), lr=3e-4)
        if name == 'torchreid':
            engine = ImageTripletEngine(datamanager, net, optimizer, margin=0.3, weight_t=1.0,
                                        weight_x=1.0, use_gpu=device == 'cuda', label_smooth=True)
        else:
            engine = build_engine(cfg, datamanager, net, optimizer, None)
        engine.writer = SummaryWriter(log_dir=tempfile.mkdtemp(prefix='bench-engine-tb-'))
        engine.max_epoch, engine.epoch = 2, 0
        engines[name] = engine

    batch = next(iter(datamanager.train_loader))
    losses = {}
    for name, engine in engines.items():
        engine.set_model_mode('train')
        log = engine.forward_backward(batch)
        losses[name] = {k: float(log[k]) for k in ('loss_t', 'loss_x')}
    sync = torch.cuda.synchronize if device == 'cuda' else (lambda: None)
    result = {'device': device, 'dataset': dataset, 'height': h, 'width': w, 'batch': bs,
              'iterations': iters, 'losses_first_batch': losses}
    for name, engine in engines.items():
        engine.train_loader = _Capped(datamanager.train_loader, 2)
        engine.train(print_freq=20)  # warm-up: loader workers, cudnn autotuning
        engine.train_loader = _Capped(datamanager.train_loader, iters)
        result['iterations'] = len(engine.train_loader)  # fewer when an epoch is shorter
        sync()
        start = time.perf_counter()
        engine.train(print_freq=20)
        sync()
        result[name + '_iter_s'] = (time.perf_counter() - start) / len(engine.train_loader)
        save({**result, 'status': 'running'})
    ours = engines['ours']
    fixed = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
    result['bare_step_s'] = median_time(lambda: ours.forward_backward(fixed), steps=10, sync=sync)
    result['status'] = 'done'
    return result


def markdown_engine(result):
    if result.get('status') != 'done':
        return '## engine: not finished'
    r = result
    host, ours, bare = r['torchreid_iter_s'], r['ours_iter_s'], r['bare_step_s']
    lines = ['## engine: torchreid `ImageTripletEngine` vs ours ({device}, resnet50, batch {batch}, '
             '{height}x{width}, real {dataset} images, {iterations} iterations)'.format(**r), '',
             '| loop | ms / iteration | vs bare step |', '|---|---:|---:|',
             '| bare step (batch on the device) | {:.1f} | 1.00x |'.format(1000 * bare),
             '| ours (`PluginEngine.train`) | {:.1f} | {:.2f}x |'.format(1000 * ours, ours / bare),
             '| torchreid (`ImageTripletEngine.train`) | {:.1f} | {:.2f}x |'.format(1000 * host,
                                                                                 host / bare),
             '', 'Ours is {:.2f}x faster per iteration. Losses on the same first batch from the same '
                 'weights: torchreid {}, ours {}.'.format(host / ours, r['losses_first_batch']['torchreid'],
                                                          r['losses_first_batch']['ours'])]
    return '\n'.join(lines)


register_benchmark('engine', bench_engine, markdown_engine)
