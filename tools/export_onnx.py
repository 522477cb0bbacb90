"""Export a trained model to ONNX and check it against PyTorch in onnxruntime.

Builds the model from the config (any name ``torchreid.models.build_model``
knows: torchreid's built-ins and plugin models), loads ``--weights`` strictly,
exports the inference graph (:func:`plugins.export.export_onnx`), then
compares onnxruntime with PyTorch on a random batch and on the first query
batch(es) of the first target dataset. Exits non-zero above tolerance.

Examples::

    python tools/export_onnx.py --config-file configs/baselines/resnet50_synthreid.yaml \\
        --weights log/resnet50_synthreid/model/model.pth.tar-12
    python tools/export_onnx.py --config-file CFG --weights W --fp16 --output model_fp16.onnx
"""
import argparse
import os.path as osp
import pickle
import sys

import torch

import plugins  # noqa: F401  (registers plugin models, datasets and config nodes)
from plugins.training.checkpoint import load_checkpoint
from plugins.export import (FP16_RTOL, FP32_RTOL, ExportError, ExportParityError, check_parity,
                            export_onnx, read_metadata)
from plugins.cli import add_config_arguments, config_or_exit
from plugins.training.launch import build_trained_model


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--output', type=str, default='',
                        help='ONNX file to write (default: <data.save_dir>/<model.name>[_fp16].onnx)')
    parser.add_argument('--fp16', action='store_true',
                        help='float16 weights and arithmetic (I/O stays float32)')
    parser.add_argument('--opset', type=int, default=17, help='ONNX opset version (default 17)')
    parser.add_argument('--rtol', type=float, default=None,
                        help='parity tolerance, max|onnx-torch| / max|torch| '
                             '(default {:g}, {:g} with --fp16)'.format(FP32_RTOL, FP16_RTOL))
    parser.add_argument('--batches', type=int, default=1,
                        help='query batches of the first target dataset to check parity on '
                             '(default 1)')
    add_config_arguments(parser, weights_help="trained weights (a torchreid checkpoint) of the config's model")
    return parser.parse_args(argv)


def _check_weights_file(path):
    """Fail early and by name on a missing or unreadable weights file (before building data)."""
    if not osp.isfile(path):
        raise FileNotFoundError('Weights file not found: "{}"'.format(path))
    try:
        load_checkpoint(path)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        raise ValueError('Weights file "{}" is not a readable torch checkpoint ({})'.format(
            path, type(err).__name__)) from None


def _short(message, limit=800):
    """A strict-load error lists every key; keep the start (it names the file)."""
    if len(message) <= limit:
        return message
    return '{} ... ({} more characters)'.format(message[:limit], len(message) - limit)


def real_batches(datamanager, target, count):
    """The first ``count`` image batches of ``target``'s query loader (normalised, as tested)."""
    batches = []
    for data in datamanager.test_loader[target]['query']:
        batches.append(data['img'])
        if len(batches) == count:
            break
    return batches


def main(argv=None):
    args = parse_args(argv)
    cfg = config_or_exit(args)
    try:
        _check_weights_file(args.weights)
        model, datamanager = build_trained_model(cfg, args.weights)
    except (FileNotFoundError, ValueError) as err:
        sys.exit('Error: {}'.format(_short(str(err))))

    rtol = args.rtol if args.rtol is not None else (FP16_RTOL if args.fp16 else FP32_RTOL)
    output = args.output or osp.join(
        cfg.data.save_dir, '{}{}.onnx'.format(cfg.model.name, '_fp16' if args.fp16 else ''))
    try:
        export_onnx(model, output, cfg.data.height, cfg.data.width, cfg.data.norm_mean,
                    cfg.data.norm_std, opset=args.opset, fp16=args.fp16, model_name=cfg.model.name)
    except (ExportError, ValueError) as err:
        sys.exit('Export failed: {}'.format(err))

    target = cfg.data.targets[0]
    generator = torch.Generator().manual_seed(cfg.train.seed)
    random_batch = torch.randn(3, 3, cfg.data.height, cfg.data.width, generator=generator)
    checks = [('random batch', [random_batch]),
              ('{} query images'.format(target), real_batches(datamanager, target, args.batches))]
    print('ONNX export of {} ({}, opset {})'.format(
        cfg.model.name, 'fp16' if args.fp16 else 'fp32', args.opset))
    failed = None
    for label, batches in checks:
        if not batches:
            print('  {:<28} none (empty loader)'.format(label))
            continue
        try:
            report, verdict = check_parity(model, output, batches, rtol=rtol), ''
        except ExportParityError as err:
            failed, report, verdict = err, err.report, '  ABOVE TOLERANCE'
        print('  {:<28} {:>3} images  max abs diff {:.3e}  max rel diff {:.3e}{}'.format(
            label, report['num_images'], report['max_abs_diff'], report['max_rel_diff'], verdict))
    print('  tolerance (relative)         {:g}'.format(rtol))
    print('  input                        images (N, 3, {}, {}) float32, N dynamic'.format(
        cfg.data.height, cfg.data.width))
    print('  feature dim                  {}'.format(read_metadata(output)['feature_dim']))
    print('  output                       {} ({:.2f} MB)'.format(
        output, osp.getsize(output) / 2 ** 20))
    if failed is not None:
        sys.exit('Parity check failed (the file is kept for inspection): {}'.format(failed))
    print('Parity OK')


if __name__ == '__main__':
    main()
