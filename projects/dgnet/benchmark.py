"""Benchmark section ``dgnet`` (``python tools/benchmark.py --sections dgnet``).

One full DG-Net iteration (D step, then the joint E_a + E_s/G step with every
term on, teacher included) at the official batch (16 images of loaders a and b,
each with one positive: 32 images) and input size (256x128), 751 classes, on one
fixed batch; its peak memory; and the ratio to torchreid's ``resnet50`` training
step (CE + triplet) on as many images. On a GPU also under bf16 and fp16
autocast. The official code takes 387 ms and 12.1 GiB per iteration on one H200
in fp32 at batch 8, 256x128 (as measured for this project); target: at most half of that.
"""
import os
import tempfile

import torch

import plugins
from plugins import median_time, save_checkpoint, step_engine, time_with_peak_memory

BATCH, HEIGHT, WIDTH, NUM_CLASSES = 32, 256, 128, 751
QUICK = (8, 80, 40)
OFFICIAL_H200_MS = 387.0
ALL_TERMS_ON = ['dgnet.warm_iter', '0', 'dgnet.warm_teacher_iter', '0', 'dgnet.warm_scale', '1.0']


def pair_batch(batch_size, height, width, num_classes, device):
    """A fixed random batch of (image, positive) pairs: identities 0, 0, 1, 1, ..."""
    g = torch.Generator().manual_seed(0)
    pids = (torch.arange(batch_size) // 2) % num_classes
    return {'img': torch.randn(batch_size, 3, height, width, generator=g).to(device),
            'pid': pids.to(device), 'camid': torch.zeros(batch_size, dtype=torch.long)}


def bench_dgnet(batch_size, height, width, amp, use_gpu, steps, teacher_path):
    torch.manual_seed(0)
    model = plugins.build_model('dgnet_resnet50', NUM_CLASSES, pretrained=False)
    opts = ['engine.name', 'dgnet', 'loss.name', 'softmax', 'sampler.train_sampler', 'PairwiseSampler',
            'sampler.pos_ratio', '1.0', 'train.batch_size', str(batch_size), 'train.amp', amp,
            'teacher.weights', teacher_path, *ALL_TERMS_ON]
    engine = step_engine(model, NUM_CLASSES, 'dgnet', use_gpu=use_gpu, opts=opts)
    batch = pair_batch(batch_size, height, width, NUM_CLASSES, engine.device)
    engine.set_model_mode('train')
    engine.batch_idx = 2  # past the warm-ups (of length 0): every term is computed
    engine.forward_backward(batch)
    if use_gpu:
        torch.cuda.empty_cache()
    return time_with_peak_memory(lambda: engine.forward_backward(batch), engine.device, steps, warmup=1)


def bench_resnet50(batch_size, height, width, amp, use_gpu, steps):
    torch.manual_seed(0)
    model = plugins.build_model('resnet50', NUM_CLASSES, loss='triplet', pretrained=False)
    engine = step_engine(model, NUM_CLASSES, 'triplet', use_gpu=use_gpu, opts=['train.amp', amp])
    batch = pair_batch(batch_size, height, width, NUM_CLASSES, engine.device)
    engine.set_model_mode('train')
    return median_time(lambda: engine.forward_backward(batch), steps=steps, warmup=2,
                       sync=torch.cuda.synchronize if use_gpu else None)


def run(args, previous, save):
    quick = getattr(args, 'quick', False)
    use_gpu = torch.cuda.is_available()
    batch_size, height, width = QUICK if quick else (BATCH, HEIGHT, WIDTH)
    result = dict(previous or {
        'batch': batch_size, 'height': height, 'width': width, 'threads': torch.get_num_threads(),
        'device': torch.cuda.get_device_name() if use_gpu else 'cpu', 'runs': {}})
    steps = 1 if quick else (10 if use_gpu else 3)
    with tempfile.TemporaryDirectory() as folder:
        teacher = plugins.build_model('resnet50', NUM_CLASSES, loss='softmax', pretrained=False)
        save_checkpoint({'state_dict': teacher.state_dict()}, folder, name='teacher.pth.tar')
        teacher_path = os.path.join(folder, 'teacher.pth.tar')
        for amp in ('', 'bf16', 'fp16') if use_gpu else ('',):
            name = amp or 'fp32'
            if name in result['runs']:
                continue
            seconds, peak = bench_dgnet(batch_size, height, width, amp, use_gpu, steps, teacher_path)
            plain = bench_resnet50(batch_size, height, width, amp, use_gpu, steps)
            result['runs'][name] = {'dgnet_s': seconds, 'peak_mib': peak, 'resnet50_s': plain,
                                    'ratio': seconds / plain}
            save(result)
    if getattr(args, 'official_dir', '') and 'official' not in result:
        result['official'] = time_against_official(args.official_dir, quick)
        save(result)
    return result


def time_against_official(official_dir, quick):
    """The official iteration and ours side by side (``check_official.py --time``), as Markdown."""
    from argparse import Namespace

    from plugins import check_clone, official_code

    from .official import time_iterations

    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    args = Namespace(batch=[2] if quick else None, iterations=[0] if quick else None,
                     rounds=1 if quick else 5)
    with official_code(check_clone(official_dir, 'dgnet'), device) as code:
        return time_iterations(code, args).markdown()


def markdown(result):
    gpu = result['device'] != 'cpu'
    lines = ['## dgnet: one DG-Net iteration',
             '',
             'All updates of one iteration (D step; E_a + E_s/G step with every term, teacher on) '
             'on a fixed batch of {batch} images ({half} + {half} with one positive each) at '
             '{height}x{width}, 751 classes, on {device}{cpu_threads}. Memory: {memory}. The official code: '
             '{official:.0f} ms and 12.1 GiB per iteration in fp32 on one H200.'.format(
                 half=result['batch'] // 4, official=OFFICIAL_H200_MS,
                 cpu_threads='' if gpu else ' ({} torch threads)'.format(result['threads']),
                 memory='peak allocated CUDA memory' if gpu else 'growth of the peak resident memory',
                 **result),
             '',
             '| precision | DG-Net iteration (ms) | peak memory (MiB) | resnet50 step, same images (ms) '
             '| ratio |', '|---|---:|---:|---:|---:|']
    for name, r in result.get('runs', {}).items():
        lines.append('| {} | {:.1f} | {:.0f} | {:.1f} | {:.2f}x |'.format(
            name, 1000 * r['dgnet_s'], r['peak_mib'], 1000 * r['resnet50_s'], r['ratio']))
    if 'official' in result:
        lines += ['', 'Against the official code on the same machine:', '', result['official']]
    if 'H200' in result['device'] and 'fp32' in result.get('runs', {}):
        lines += ['', 'fp32 iteration vs the official code on the same GPU: {:.2f}x (target at most '
                  '0.5x).'.format(1000 * result['runs']['fp32']['dgnet_s'] / OFFICIAL_H200_MS)]
    return '\n'.join(lines)
