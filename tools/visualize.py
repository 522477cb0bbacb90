"""Look at what a trained model does: ranked retrieval lists and attention maps, as PNG files.

Examples::

    # top-10 ranked gallery images for 20 queries of the first target dataset
    python tools/visualize.py ranked --config-file configs/baselines/resnet50_synthreid.yaml \\
        --weights log/resnet50_synthreid/model/model.pth.tar-12
    # attention of the first 8 query images (a project's own maps, else Grad-CAM)
    python tools/visualize.py attention --config-file CFG --weights W
    # Grad-CAM at another layer, for given image files (config overrides after `--`)
    python tools/visualize.py attention --config-file CFG --weights W --layer layer3 \\
        --images a.jpg b.png -- data.height 128
    # generative models (DG-Net): rows keep a structure, columns lend their appearance
    python tools/visualize.py swap --config-file configs/dgnet/dgnet_resnet50_synthreid.yaml \\
        --weights log/dgnet_resnet50_synthreid/model/model.pth.tar-2 --num-images 6

Config overrides (``KEY VALUE`` pairs) come last, as in ``tools/train.py``.
Output goes to ``<data.save_dir>/visrank_<dataset>/`` and ``<data.save_dir>/actmap_<dataset>/``
unless ``--output`` says otherwise.
"""
import argparse
import os.path as osp
import re
import sys
import warnings

import numpy as np
import torch

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

warnings.filterwarnings('ignore', message='Cython evaluation')  # the host's notice on import
import plugins  # noqa: E402  (registers synthreid and the projects)
from plugins import config as C  # noqa: E402
from plugins.evaluation import protocol as evaluation  # noqa: E402
from plugins import visualization as V  # noqa: E402
from plugins.cli import add_config_arguments, config_or_exit  # noqa: E402
from plugins.training.launch import build_trained_model  # noqa: E402

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.tif', '.tiff', '.webp', '.ppm', '.pgm')
DISPLAY_HEIGHT = 256
IMAGES_PER_ROW = 8


class UserError(Exception):
    """A problem the user can fix; printed without a traceback."""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split('\n', 2)[2])
    sub = parser.add_subparsers(dest='command', required=True)

    def common(p):
        p.add_argument('--output', type=str, default='', help='output folder')
        add_config_arguments(p, weights_help='trained checkpoint (model.pth.tar-N)')

    ranked = sub.add_parser('ranked', help='ranked retrieval lists (query + top-k gallery)',
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ranked.add_argument('--topk', type=int, default=10, help='gallery images per list')
    ranked.add_argument('--num-queries', type=int, default=20,
                        help='queries drawn, evenly spaced over the query set (0: all)')
    common(ranked)

    attention = sub.add_parser('attention', help='attention / Grad-CAM maps over input images',
                               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    attention.add_argument('--images', type=str, nargs='+', default=None,
                           help='image files (default: the first query images of the dataset); '
                                'end the list with -- when config overrides follow')
    attention.add_argument('--num-images', type=int, default=8,
                           help='query images used when --images is not given')
    attention.add_argument('--layer', type=str, default=None,
                           help='Grad-CAM target layer, a dotted module name (default: last conv layer)')
    common(attention)

    swap = sub.add_parser('swap', help='appearance/structure swap grid of a generative model',
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    swap.add_argument('--num-images', type=int, default=6,
                      help='query images of different identities, as structure and appearance sources')
    common(swap)
    args = parser.parse_args(argv)
    if args.opts and args.opts[0] == '--':
        args.opts = args.opts[1:]
    return args


def load(args):
    """Config, then the model with the weights loaded strictly (eval mode), and its data manager."""
    if not osp.isfile(args.weights):
        raise UserError('Weights file not found: "{}"'.format(args.weights))
    cfg = config_or_exit(args)
    try:
        model, datamanager = build_trained_model(cfg, args.weights)
    except (FileNotFoundError, ValueError, KeyError) as err:
        raise UserError(err.args[0] if err.args else str(err)) from None
    if cfg.use_gpu:
        model = model.cuda()
    return cfg, model, datamanager


def device_of(model):
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device('cpu')


@torch.no_grad()
def extract_features(model, loader, cfg):
    """Eval-mode features of a test loader (video tracklets pooled as torchreid does; with
    ``test.flip`` the mean of each image's and its mirror's, as the evaluation computes)."""
    model.eval()
    device, feats = device_of(model), []

    def features(imgs):
        if imgs.dim() == 5:  # video: (b, s, c, h, w)
            b, s = imgs.shape[:2]
            f = V._first_tensor(model(imgs.flatten(0, 1))).view(b, s, -1)
            return f.mean(1) if cfg.video.pooling_method == 'avg' else f.max(1)[0]
        return V._first_tensor(model(imgs)).flatten(1)
    for batch in loader:
        imgs = batch['img'].to(device)
        f = (evaluation.flip_averaged(features, imgs, evaluation.flip_merge_of(model))
             if cfg.test.flip else features(imgs))
        feats.append(f.float().cpu())
    return torch.cat(feats, 0)


def run_ranked(args):
    if args.topk < 1:
        raise UserError('--topk must be at least 1')
    cfg, model, dm = load(args)
    target = cfg.data.targets[0]
    query, gallery = dm.fetch_test_loaders(target)
    print('Extracting features of {} ({} query, {} gallery images) ...'.format(
        target, len(query), len(gallery)))
    qf = extract_features(model, dm.test_loader[target]['query'], cfg)
    gf = extract_features(model, dm.test_loader[target]['gallery'], cfg)
    options = C.evaluation_kwargs(cfg)
    del options['flip']  # in the features already
    distmat = evaluation.distances(qf, gf, device=device_of(model), **options)
    cmc, mAP = plugins.evaluate_rank(distmat, np.asarray([q[1] for q in query]),
                                     np.asarray([g[1] for g in gallery]),
                                     np.asarray([q[2] for q in query]),
                                     np.asarray([g[2] for g in gallery]))
    print('{} ({}): Rank-1 {:.1%}, mAP {:.1%}'.format(target, ', '.join(
        '{} {}'.format(k, v) for k, v in C.evaluation_kwargs(cfg).items()), cmc[0], mAP))
    out_dir = args.output or osp.join(cfg.data.save_dir, 'visrank_' + target)
    written = V.save_ranked_results(distmat, query, gallery, out_dir, topk=args.topk,
                                    max_queries=args.num_queries or None,
                                    width=DISPLAY_HEIGHT // 2, height=DISPLAY_HEIGHT)
    print('Wrote {} ranked lists (top-{}) to "{}"'.format(len(written), args.topk, out_dir))
    return written


def _looks_like_config_key(path):
    return (not osp.exists(path) and not path.lower().endswith(IMAGE_EXTENSIONS)
            and re.match(r'^[A-Za-z_]+(\.[A-Za-z_0-9]+)+$', path) is not None)


def run_attention(args):
    from PIL import Image

    if args.images:
        for path in args.images:
            if _looks_like_config_key(path):
                raise UserError('Cannot read image file "{}": no such file (config overrides after '
                                '--images must follow "--")'.format(path))
            if not osp.isfile(path):
                raise UserError('Cannot read image file "{}": no such file'.format(path))
    elif args.num_images < 1:
        raise UserError('--num-images must be at least 1')
    cfg, model, dm = load(args)
    target = cfg.data.targets[0]
    if args.images:
        paths = list(args.images)
    else:
        query = dm.fetch_test_loaders(target)[0]
        paths = [V._image_path(q) for q in query[:args.num_images]]
    try:
        originals = [V.read_rgb(p) for p in paths]
    except ValueError as err:
        raise UserError(err.args[0]) from None
    batch = torch.stack([dm.preprocess_pil_img(Image.fromarray(img)) for img in originals])
    batch = batch.to(device_of(model))
    registered = cfg.model.name in plugins.ATTENTION_MAPS
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        try:
            if registered:
                maps = V.attention_maps(cfg.model.name, model, batch, target_layer=args.layer)
                titles = {name: [name] * len(paths) for name in maps}
                source = 'registered attention maps ({})'.format(', '.join(maps))
            else:
                cam, info = V.grad_cam(model, batch, target_layer=args.layer, return_info=True)
                maps = {'grad_cam': cam}
                titles = {'grad_cam': ['{} {}'.format(
                    info['layer'], 'cls {}'.format(c) if info['classes'] is not None else '|f|')
                    for c in (info['classes'].tolist() if info['classes'] is not None
                              else [None] * len(paths))]}
                source = 'Grad-CAM at {} ({})'.format(info['layer'], 'argmax class' if
                                                      info['classes'] is not None
                                                      else 'feature-norm score')
        except ValueError as err:
            raise UserError(err.args[0]) from None
    for w in caught:
        if 'grad_cam' in str(w.message):
            print('Note: {}'.format(w.message))
    entries = []  # per image: the original, then one overlay per map
    for i, (path, img) in enumerate(zip(paths, originals)):
        shown = V.resize_to_height(img, DISPLAY_HEIGHT)
        entries.append([(osp.basename(path), shown)] +
                       [(titles[name][i], V.overlay(shown, m[i])) for name, m in maps.items()])
    # several images side by side per grid row, about IMAGES_PER_ROW cells wide
    per_row = max(1, IMAGES_PER_ROW // len(entries[0]))
    rows = [sum(entries[i:i + per_row], []) for i in range(0, len(entries), per_row)]
    out_dir = args.output or osp.join(cfg.data.save_dir, 'actmap_' + target)
    out = V.save_grid(rows, osp.join(out_dir, 'attention_{}.png'.format(cfg.model.name)))
    print('{}: {} for {} images: "{}"'.format(cfg.model.name, source, len(paths), out))
    return out


def to_rgb_uint8(images, cfg):
    """(N, 3, H, W) images in the config's normalisation -> list of (H, W, 3) uint8 arrays."""
    mean = torch.tensor(cfg.data.norm_mean).view(1, 3, 1, 1)
    std = torch.tensor(cfg.data.norm_std).view(1, 3, 1, 1)
    pixels = ((images.detach().float().cpu() * std + mean).clamp(0, 1) * 255).round().byte()
    return list(pixels.permute(0, 2, 3, 1).numpy())


def run_swap(args):
    from PIL import Image

    if args.num_images < 2:
        raise UserError('--num-images must be at least 2')
    cfg, model, dm = load(args)
    if cfg.model.name not in plugins.APPEARANCE_SWAPS:
        raise UserError('Model {!r} has no generator to swap appearances with; models with one: '
                        '{}'.format(cfg.model.name, sorted(plugins.APPEARANCE_SWAPS) or 'none installed'))
    target = cfg.data.targets[0]
    query, seen = [], set()
    for entry in dm.fetch_test_loaders(target)[0]:  # one image per identity
        if entry[1] not in seen:
            seen.add(entry[1])
            query.append(V._image_path(entry))
        if len(query) == args.num_images:
            break
    try:
        originals = [V.read_rgb(p) for p in query]
    except ValueError as err:
        raise UserError(err.args[0]) from None
    images = torch.stack([dm.preprocess_pil_img(Image.fromarray(img)) for img in originals])
    images = images.to(device_of(model))
    try:
        with torch.no_grad():
            grid = plugins.APPEARANCE_SWAPS.get(cfg.model.name)(model, args.weights, images, images)
    except (FileNotFoundError, ValueError) as err:
        raise UserError(err.args[0] if err.args else str(err)) from None
    sources = to_rgb_uint8(images, cfg)
    blank = np.full_like(sources[0], 255)
    rows = [[('structure \\ appearance', blank)] + [('appearance', img) for img in sources]]
    for i, structure in enumerate(sources):
        rows.append([('structure', structure)] + to_rgb_uint8(grid[i], cfg))
    out_dir = args.output or osp.join(cfg.data.save_dir, 'swap_' + target)
    out = V.save_grid(rows, osp.join(out_dir, 'swap_{}.png'.format(cfg.model.name)),
                      cell_height=DISPLAY_HEIGHT // 2)
    print('{}: swap grid of {} images (rows: structure, columns: appearance): "{}"'.format(
        cfg.model.name, len(query), out))
    return out


def main(argv=None):
    args = parse_args(argv)
    try:
        if args.command == 'ranked':
            run_ranked(args)
        elif args.command == 'swap':
            run_swap(args)
        else:
            run_attention(args)
    except UserError as err:
        sys.exit('Error: {}'.format(err))


if __name__ == '__main__':
    main()
