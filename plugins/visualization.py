"""Visualisation for every registered model: Grad-CAM, project attention maps, ranked lists.

* :func:`grad_cam` works on any CNN that follows torchreid's model contract
  (eval mode -> features, training mode -> logits or ``(logits, ...)``), built by
  ``torchreid.models.build_model`` or registered through :mod:`plugins`.
* Projects expose their own attention through :func:`register_attention_maps`;
  :func:`attention_maps` returns those, or Grad-CAM for models without any.
* :func:`overlay`, :func:`save_grid` and :func:`save_ranked_results` write PNG
  files a person can look at. ``tools/visualize.py`` is the command line.

Nothing here changes a model: parameters, buffers (BatchNorm running stats),
train/eval modes and ``.grad`` are as before a call, and no hook is left behind.
"""
import contextlib
import os
import os.path as osp
import re
import warnings

import cv2
import numpy as np
import torch
import torch.nn as nn
from PIL import Image, ImageDraw, ImageFont

from plugins.nn.attention import cam_from_gradients, normalise_maps
from plugins.registry import ATTENTION_MAPS

__all__ = ['attention_maps', 'conv_layer_names', 'grad_cam', 'overlay', 'preserved_state', 'read_rgb',
           'resize_to_height', 'save_grid', 'save_ranked_results']


# Modules whose behaviour differs between train and eval mode in ways Grad-CAM must not see.
_EVAL_ONLY = (nn.modules.batchnorm._NormBase, nn.modules.dropout._DropoutNd)


# ----------------------------------------------------------------------------------------------
# Model state
# ----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def preserved_state(model):
    """Restore every module's train/eval flag and every buffer's value on exit.

    BatchNorm layers are put in eval mode before any forward, so running stats are
    never updated in the first place; restoring buffers also covers models that
    keep other state (memory banks, counters) updated in training mode.
    """
    modes = [(m, m.training) for m in model.modules()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        yield model
    finally:
        for module, mode in modes:
            module.training = mode
        with torch.no_grad():
            for buf, saved in buffers:
                buf.copy_(saved)


def _logit_mode(model):
    """Training mode (so torchreid models return logits) with every BatchNorm/Dropout in eval."""
    model.train()
    for m in model.modules():
        if isinstance(m, _EVAL_ONLY):
            m.train(False)


def _class_evidence(output, loss='softmax'):
    """Class logits of a torchreid training-mode output, or None.

    ``Tensor`` -> itself; ``(logits, features)`` -> logits; a list of part logits
    (PCB) or, for softmax models, a tuple of same-shaped branch logits (HACNN) ->
    their sum, i.e. the total evidence for each class.
    """
    if isinstance(output, (tuple, list)) and output:
        first = output[0]
        if isinstance(first, (tuple, list)):
            parts = [t for t in first if isinstance(t, torch.Tensor)]
            if parts and len(parts) == len(first) and all(t.shape == parts[0].shape for t in parts):
                return torch.stack(parts).sum(0)
            return None
        if (loss == 'softmax' and all(isinstance(t, torch.Tensor) for t in output)
                and all(t.shape == first.shape for t in output)):
            return torch.stack(list(output)).sum(0)
    return _first_tensor(output)


def _first_tensor(output):
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict):
        for key in ('logits', 'y', 'cls_score'):
            if isinstance(output.get(key), torch.Tensor):
                return output[key]
        return None
    if isinstance(output, (tuple, list)) and output:
        return _first_tensor(output[0])
    return None


# ----------------------------------------------------------------------------------------------
# Grad-CAM
# ----------------------------------------------------------------------------------------------
def _contains_conv(module):
    return any(isinstance(m, nn.Conv2d) for m in module.modules())


def _resolve_layer(model, target_layer):
    """``(name, module)`` of an explicit target layer (module or dotted name)."""
    named = dict(model.named_modules())
    if isinstance(target_layer, nn.Module):
        for name, module in named.items():
            if module is target_layer:
                return name, module
        raise ValueError('target_layer {} is not a submodule of {}'.format(
            type(target_layer).__name__, type(model).__name__))
    if not isinstance(target_layer, str):
        raise TypeError('target_layer must be None, a module or a dotted name, got {!r}'.format(
            target_layer))
    if target_layer not in named:
        candidates = sorted(conv_layer_names(model), key=lambda n: n.count('.'))  # shallow first
        shown = candidates[:10]
        raise ValueError('Unknown target layer {!r} for {}. Layers with convolutions include: {}{}'.format(
            target_layer, type(model).__name__, ', '.join(shown) or '(none)',
            ' (and {} more; see plugins.visualization.conv_layer_names)'.format(
                len(candidates) - len(shown)) if len(candidates) > len(shown) else ''))
    return target_layer, named[target_layer]


def conv_layer_names(model):
    """Dotted names of the submodules that contain an ``nn.Conv2d`` (valid Grad-CAM targets)."""
    return [name for name, m in model.named_modules() if name and _contains_conv(m)]


class _Recorder:
    """Forward hooks that keep (name, output) of 4-D outputs, in the order modules finish.

    The hook returns a clone of the output, so in-place operations after the
    layer (``out += identity``, ``ReLU(inplace=True)``) cannot change the recorded
    activation or its place in the graph.
    """

    def __init__(self, named_modules):
        self.records = []
        self.handles = []
        for name, module in named_modules:
            self.handles.append(module.register_forward_hook(self._hook(name)))

    def _hook(self, name):
        def hook(module, inputs, output):
            if isinstance(output, torch.Tensor) and output.dim() == 4 and output.is_floating_point():
                self.records.append((name, output))
                return output.clone()
            return None
        return hook

    def remove(self):
        for handle in self.handles:
            handle.remove()
        self.handles = []


def _pick_default(records):
    """The last recorded 4-D output with more than one spatial position (else the last one)."""
    for name, act in reversed(records):
        if act.shape[2] * act.shape[3] > 1:
            return name, act
    return records[-1]


def _class_indices(class_idx, n, num_classes, logits):
    if class_idx is None:
        return logits.detach().argmax(dim=1)
    idx = torch.as_tensor(class_idx, dtype=torch.long, device=logits.device).flatten()
    if idx.numel() == 1:
        idx = idx.expand(n)
    if idx.numel() != n:
        raise ValueError('class_idx has {} entries for {} images'.format(idx.numel(), n))
    if bool(((idx < 0) | (idx >= num_classes)).any()):
        raise ValueError('class_idx {} out of range for {} classes'.format(idx.tolist(), num_classes))
    return idx




def grad_cam(model, images, target_layer=None, class_idx=None, return_info=False):
    """Grad-CAM maps of ``images`` (Selvaraju et al., ICCV 2017) for a torchreid-style CNN.

    ``weights_k = mean_{x,y} d score / d A_k(x,y)``, ``map = ReLU(sum_k weights_k A_k)``,
    min-max normalised per image.

    The class score comes from the model in training mode (torchreid models return
    logits, or ``(logits, features)``, there; part/branch logits such as PCB's are
    summed) with every BatchNorm and Dropout in
    eval mode, so the forward is the deterministic eval computation and running
    stats are never updated. All modes and buffers are restored afterwards;
    parameters' ``.grad`` are not touched (gradients are taken with
    ``torch.autograd.grad`` w.r.t. the activation only) and no hook is left behind.

    **Fallback score.** If the model gives no usable logits in training mode (no 2-D
    tensor first output, a single class as with ``num_classes == 1``, or the
    training-mode forward raises), the score is the L2 norm of the eval-mode
    feature vector (a warning says so) and ``class_idx`` is ignored.

    Args:
        model (nn.Module): the network (any device; ``images`` are moved to it).
        images (Tensor): (N, 3, H, W) preprocessed batch.
        target_layer (None, nn.Module or str): layer whose output ``A`` is explained.
            Default: the last module, in forward order, that contains an ``nn.Conv2d``
            and outputs a 4-D tensor with more than one spatial position (e.g.
            ``layer4`` of a ResNet, ``conv5`` of an OSNet). A dotted name (as in
            ``model.named_modules()``) or the module itself selects another; if it
            runs several times, its last call is used.
        class_idx (None, int or sequence of N ints): class per image (e.g. ground
            truth); default: each image's argmax class.
        return_info (bool): also return a dict with ``layer`` (the name used),
            ``score`` ('logits' or 'feature_norm') and ``classes`` (LongTensor or None).

    Returns:
        Tensor (N, h, w) in [0, 1] on the CPU, at the layer's resolution
        (``(maps, info)`` with ``return_info``).

    Raises:
        ValueError: unknown layer name (the message lists valid ones), a layer that
            does not run or does not output a 4-D tensor, a bad ``class_idx``.
    """
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise ValueError('images must be a (N, 3, H, W) tensor, got {}'.format(
            tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__))
    explicit = None if target_layer is None else _resolve_layer(model, target_layer)
    param = next(model.parameters(), None)
    device = param.device if param is not None else images.device
    # A leaf that requires grad keeps the graph alive even when every parameter is frozen.
    x = images.detach().to(device).clone().requires_grad_(True)

    if explicit is not None:
        hooked = [explicit]
    else:
        hooked = [(n, m) for n, m in model.named_modules() if n and _contains_conv(m)]
    info = {'layer': None, 'score': 'logits', 'classes': None}
    recorder = None
    with preserved_state(model), torch.enable_grad():
        try:
            recorder = _Recorder(hooked)
            logits, error = None, None
            _logit_mode(model)
            try:
                logits = _class_evidence(model(x), getattr(model, 'loss', 'softmax'))
            except Exception as err:  # e.g. a training forward that needs labels
                error = err
            usable = logits is not None and logits.dim() == 2 and logits.size(1) > 1
            if not usable:
                warnings.warn('grad_cam: {} gives no usable class logits in training mode ({}); '
                              'using the L2 norm of the eval feature as the score'.format(
                                  type(model).__name__,
                                  'raised {}: {}'.format(type(error).__name__, error) if error
                                  else 'output {}'.format(None if logits is None
                                                          else tuple(logits.shape))))
                recorder.records = []
                model.eval()
                feats = _first_tensor(model(x))
                if feats is None:
                    raise ValueError('grad_cam: {} returns no tensor in eval mode'.format(
                        type(model).__name__))
                score = feats.flatten(1).float().norm(dim=1).sum()
                info['score'] = 'feature_norm'
            else:
                classes = _class_indices(class_idx, x.size(0), logits.size(1), logits)
                score = logits.gather(1, classes.view(-1, 1)).sum()
                info['classes'] = classes.detach().cpu()
            if not recorder.records:
                if explicit is not None:
                    raise ValueError('target layer {!r} did not output a 4-D tensor in the forward '
                                     'pass'.format(explicit[0]))
                raise ValueError('{} has no convolutional layer with a 4-D output'.format(
                    type(model).__name__))
            name, act = recorder.records[-1] if explicit is not None else _pick_default(recorder.records)
            info['layer'] = name
            grads, = torch.autograd.grad(score, act, allow_unused=True)
            if grads is None:
                grads = torch.zeros_like(act)
        finally:
            if recorder is not None:
                recorder.remove()
    cam = cam_from_gradients(act.detach().float(), grads.detach().float())
    maps = normalise_maps(cam).cpu()
    return (maps, info) if return_info else maps


# ----------------------------------------------------------------------------------------------
# Attention maps (a project's registered maps, else Grad-CAM)
# ----------------------------------------------------------------------------------------------
def attention_maps(model_name, model, images, target_layer=None, class_idx=None):
    """``{name: Tensor (N, h, w) in [0, 1]}``: the project's registered maps, else Grad-CAM.

    For a model registered with :func:`register_attention_maps` its function's maps
    are returned (each min-max normalised per image for display; modes and
    buffers restored afterwards); an explicit ``target_layer`` adds Grad-CAM at
    that layer as ``'grad_cam:<layer>'``. Other models get ``{'grad_cam': ...}``.
    """
    if model_name not in ATTENTION_MAPS:
        return {'grad_cam': grad_cam(model, images, target_layer=target_layer, class_idx=class_idx)}
    fn = ATTENTION_MAPS.get(model_name)
    with preserved_state(model):
        raw = fn(model, images)
    if not isinstance(raw, dict) or not raw:
        raise TypeError('attention maps of {!r} must be a non-empty dict of (N, h, w) tensors, '
                        'got {}'.format(model_name, type(raw).__name__))
    maps = {}
    for name, value in raw.items():
        value = torch.as_tensor(value).detach().float().cpu()
        if value.dim() == 4 and value.size(1) == 1:
            value = value[:, 0]
        if value.dim() != 3 or value.size(0) != images.size(0):
            raise ValueError('attention map {!r} of {!r} has shape {}, expected ({}, h, w)'.format(
                name, model_name, tuple(value.shape), images.size(0)))
        maps[name] = normalise_maps(value)
    if target_layer is not None:
        name = target_layer if isinstance(target_layer, str) else _resolve_layer(model, target_layer)[0]
        maps['grad_cam:' + name] = grad_cam(model, images, target_layer=target_layer,
                                            class_idx=class_idx)
    return maps



# ----------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------
def read_rgb(path):
    """An image file as an (H, W, 3) uint8 RGB array; unreadable files raise ``ValueError`` naming them."""
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert('RGB')).copy()
    except (OSError, ValueError) as err:
        raise ValueError('Cannot read image file "{}": {}'.format(path, err)) from None


def _as_rgb(image):
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert('RGB'))
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError('expected an (H, W, 3) RGB image, got shape {}'.format(image.shape))
    if image.dtype != np.uint8:
        raise ValueError('expected a uint8 image, got {}'.format(image.dtype))
    return image


def overlay(image_rgb_uint8, heatmap, alpha=0.5):
    """Blend a jet-coloured ``heatmap`` (2-D, values in [0, 1]) onto an RGB uint8 image.

    The heatmap is resized (bilinear) to the image size; returns (H, W, 3) uint8 RGB:
    ``(1 - alpha) * image + alpha * jet(heatmap)``.
    """
    image = _as_rgb(image_rgb_uint8)
    if isinstance(heatmap, torch.Tensor):
        heatmap = heatmap.detach().float().cpu().numpy()
    heatmap = np.asarray(heatmap, dtype=np.float32)
    if heatmap.ndim != 2:
        raise ValueError('heatmap must be 2-D, got shape {}'.format(heatmap.shape))
    if not 0.0 <= alpha <= 1.0:
        raise ValueError('alpha must be in [0, 1], got {}'.format(alpha))
    h, w = image.shape[:2]
    heat = cv2.resize(np.clip(heatmap, 0, 1), (w, h), interpolation=cv2.INTER_LINEAR)
    colour = cv2.applyColorMap(np.uint8(np.round(255 * heat)), cv2.COLORMAP_JET)
    colour = cv2.cvtColor(colour, cv2.COLOR_BGR2RGB)
    out = (1 - alpha) * image.astype(np.float32) + alpha * colour.astype(np.float32)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _font(size):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed-size bitmap font
        return ImageFont.load_default()


def _draw_text(canvas, xy, text, max_width, fill=(0, 0, 0), size=12):
    """Draw ``text`` on a PIL image, shortened with '...' to ``max_width`` pixels."""
    draw = ImageDraw.Draw(canvas)
    font = _font(size)
    shown = text
    while shown and draw.textlength(shown, font=font) > max_width:
        shown = shown[:-1]
    if shown != text:
        shown = shown[:-3] + '...' if len(shown) > 3 else shown
    draw.text(xy, shown, fill=fill, font=font)


def resize_to_height(image, height):
    """Scale an (H, W, 3) image to ``height`` rows, keeping its aspect ratio."""
    h, w = image.shape[:2]
    width = max(1, int(round(w * height / float(h))))
    interp = cv2.INTER_CUBIC if height > h else cv2.INTER_AREA
    return cv2.resize(image, (width, height), interpolation=interp)


GRID_PAD = 6
GRID_TITLE = 18


def save_grid(rows, path, cell_height=None):
    """Write a PNG grid: one row per input, e.g. the original then one overlay per map.

    Args:
        rows: list of rows; each entry of a row is an (H, W, 3) uint8 RGB array or a
            ``(title, array)`` pair. Every image is scaled to ``cell_height`` (default:
            the tallest image), keeping its aspect ratio.
        path (str): output file; the folder is created. Always PNG.

    Returns:
        str: ``path``.
    """
    cells = []
    for row in rows:
        cells.append([(item if isinstance(item, tuple) else ('', item)) for item in row])
    if not cells or not any(cells):
        raise ValueError('save_grid needs at least one image')
    cells = [[(str(title), _as_rgb(img)) for title, img in row] for row in cells]
    height = int(cell_height or max(img.shape[0] for row in cells for _, img in row))
    cells = [[(title, resize_to_height(img, height)) for title, img in row] for row in cells]
    ncols = max(len(row) for row in cells)
    col_w = [max((row[c][1].shape[1] for row in cells if c < len(row)), default=0)
             for c in range(ncols)]
    titled = any(title for row in cells for title, _ in row)
    title_h = GRID_TITLE if titled else 0
    width = sum(col_w) + GRID_PAD * (ncols + 1)
    total_h = len(cells) * (height + title_h) + GRID_PAD * (len(cells) + 1)
    canvas = np.full((total_h, width, 3), 255, dtype=np.uint8)
    positions = []
    y = GRID_PAD
    for row in cells:
        x = GRID_PAD
        for c, (title, img) in enumerate(row):
            canvas[y + title_h:y + title_h + height, x:x + img.shape[1]] = img
            positions.append((x, y, col_w[c], title))
            x += col_w[c] + GRID_PAD
        y += height + title_h + GRID_PAD
    pil = Image.fromarray(canvas)
    for x, y, w, title in positions:
        if title:
            _draw_text(pil, (x, y + 2), title, w)
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    pil.save(path, format='PNG')
    return path


# ----------------------------------------------------------------------------------------------
# Ranked retrieval lists
# ----------------------------------------------------------------------------------------------
RANK_BORDER = 5
RANK_SPACING = 10
RANK_QUERY_SPACING = 60
RANK_LABEL = 16
GREEN = (0, 200, 0)
RED = (230, 0, 0)
QUERY_BORDER = (0, 0, 0)


def _image_path(entry):
    path = entry[0]
    if isinstance(path, (tuple, list)):  # video re-id: show a tracklet's first frame
        path = path[0]
    return path


def _bordered(path, width, height, colour):
    img = cv2.resize(read_rgb(path), (width, height), interpolation=cv2.INTER_LINEAR)
    b = RANK_BORDER
    return cv2.copyMakeBorder(img, b, b, b, b, cv2.BORDER_CONSTANT, value=colour)


def _safe_name(path):
    return re.sub(r'[^A-Za-z0-9_.-]+', '_', osp.splitext(osp.basename(path))[0]) or 'query'


def save_ranked_results(distmat, query, gallery, path_dir, topk=10, max_queries=None,
                        width=128, height=256):
    """Ranked retrieval lists as PNG files, one per query (torchreid's layout, in PNG).

    Each file shows the query (black border), then its ``topk`` nearest gallery
    images by ascending distance with a green border for a true match (same pid)
    and a red one otherwise. Gallery images with the query's pid *and* camera are
    skipped, as the evaluation protocol does. Labels above the images give the
    rank, pid and camid (torchreid's 0-based camera index: Market's ``c2`` is 1).

    Args:
        distmat (array or Tensor): (num_query, num_gallery) distances.
        query, gallery: sequences of ``(img_path, pid, camid, ...)`` (torchreid's
            ``datamanager.fetch_test_loaders(name)``); a video tracklet shows its first frame.
        path_dir (str): output folder (created).
        topk (int): gallery images per list.
        max_queries (int or None): number of queries drawn, evenly spaced over the
            query set (all when None).
        width, height (int): size each image is shown at.

    Returns:
        list of str: the PNG files written, named ``<query index>_<query file name>.png``.
    """
    if isinstance(distmat, torch.Tensor):
        distmat = distmat.detach().cpu().numpy()
    distmat = np.asarray(distmat)
    num_q, num_g = distmat.shape
    if num_q != len(query) or num_g != len(gallery):
        raise ValueError('distmat is {}x{} but there are {} queries and {} gallery items'.format(
            num_q, num_g, len(query), len(gallery)))
    if topk < 1:
        raise ValueError('topk must be >= 1, got {}'.format(topk))
    os.makedirs(path_dir, exist_ok=True)
    if max_queries is None or max_queries >= num_q:
        chosen = list(range(num_q))
    else:
        chosen = sorted(set(np.linspace(0, num_q - 1, max(1, int(max_queries))).round().astype(int)))

    cell_w, cell_h = width + 2 * RANK_BORDER, height + 2 * RANK_BORDER
    canvas_w = cell_w * (topk + 1) + RANK_SPACING * (topk - 1) + RANK_QUERY_SPACING
    canvas_h = RANK_LABEL + cell_h
    g_pids = np.asarray([g[1] for g in gallery])
    g_cams = np.asarray([g[2] for g in gallery])
    written = []
    for q_idx in chosen:
        qpath, qpid, qcam = _image_path(query[q_idx]), query[q_idx][1], query[q_idx][2]
        canvas = np.full((canvas_h, canvas_w, 3), 255, dtype=np.uint8)
        canvas[RANK_LABEL:, :cell_w] = _bordered(qpath, width, height, QUERY_BORDER)
        labels = [(0, 'query pid {} cam {}'.format(qpid, qcam))]
        order = np.argsort(distmat[q_idx], kind='stable')
        keep = order[~((g_pids[order] == qpid) & (g_cams[order] == qcam))][:topk]
        for rank, g_idx in enumerate(keep, start=1):
            matched = g_pids[g_idx] == qpid
            x = cell_w + RANK_QUERY_SPACING + (rank - 1) * (cell_w + RANK_SPACING)
            canvas[RANK_LABEL:, x:x + cell_w] = _bordered(
                _image_path(gallery[g_idx]), width, height, GREEN if matched else RED)
            labels.append((x, '{} pid {} c{}'.format(rank, g_pids[g_idx], g_cams[g_idx])))
        pil = Image.fromarray(canvas)
        for x, text in labels:
            _draw_text(pil, (x + 1, 1), text, cell_w - 2 if x else cell_w + RANK_QUERY_SPACING - 4)
        out = osp.join(path_dir, '{:04d}_{}.png'.format(q_idx, _safe_name(qpath)))
        pil.save(out, format='PNG')
        written.append(out)
    return written
