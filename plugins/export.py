"""ONNX export of any registered model's inference graph, with parity and leak checks.

The exported graph is what torchreid's test loop and ``FeatureExtractor`` run:
the model in eval mode, a batch of normalised RGB images in, the retrieval
feature out. One file is all a deployer needs: its ``metadata_props`` record
the input size, the normalisation and the feature size (:data:`METADATA_KEYS`).

* :func:`export_onnx` exports (TorchScript-based exporter, ``dynamo=False``),
  with input ``images`` (N, 3, H, W) float32, output ``features`` (N, D)
  float32, a dynamic batch axis, ``onnx.checker`` and the training-only check.
* :func:`training_only_initializers` lists graph tensors whose values are
  parameters of modules that do not run in the eval forward (classifiers,
  critics, discriminators, generators, pairwise heads, Grad-CAM branches).
* :func:`check_parity` compares onnxruntime (CPU) with PyTorch.
* :class:`OnnxFeatureExtractor` is torchreid's ``FeatureExtractor`` on an
  exported file: same inputs, same preprocessing, sizes read from the file.

Parity is measured as ``max_abs = max |onnx - torch|`` and
``max_rel = max |onnx - torch| / max |torch|`` over a batch (the largest error
relative to the largest feature value, so near-zero feature entries do not
blow the ratio up); over several batches the worst batch counts.

fp16: the model is traced in half precision inside a wrapper that casts the
float32 input to float16 and the float16 features back to float32, so the file
holds float16 weights and float16 arithmetic while its I/O stays float32.
onnxruntime's CPU provider runs it: for operators it has no float16 kernel
for, it inserts casts to float32 itself. Parity against the float32 PyTorch
model is checked at :data:`FP16_RTOL` (1e-2 relative).
"""
import copy
import json
import os
import os.path as osp
import warnings

import numpy as np
import onnx
import torch
import torch.nn as nn
from onnx import numpy_helper

from plugins.evaluation.protocol import flip_averaged

INPUT_NAME = 'images'
OUTPUT_NAME = 'features'
FP32_RTOL = 1e-4
FP16_RTOL = 1e-2
EXPORT_BATCH = 2  # batch size of the example traced; the batch axis is dynamic anyway

#: Keys written to the ONNX file's ``metadata_props`` (all values are strings;
#: lists are JSON).
METADATA_KEYS = (
    'model_name', 'input_name', 'output_name', 'input_layout', 'input_dtype', 'output_dtype',
    'height', 'width', 'norm_mean', 'norm_std', 'colour_order', 'pixel_scaling',
    'feature_dim', 'precision', 'opset', 'torch_version', 'torchreid_version', 'exporter',
)
PIXEL_SCALING = 'uint8 pixels / 255 (range 0-1), then (x - norm_mean) / norm_std per channel'


class ExportError(RuntimeError):
    """The model cannot be exported, or the exported graph is not the inference graph."""


class ExportParityError(ExportError):
    """onnxruntime's features differ from PyTorch's by more than the tolerance.

    ``report`` holds :func:`check_parity`'s numbers up to the failing batch.
    """

    def __init__(self, message, report=None):
        super().__init__(message)
        self.report = report


# ---------------------------------------------------------------------------
# Which parameters the eval forward uses


def eval_module_names(model, example_input):
    """Names of the modules (``''``: the root) called in one eval forward of ``example_input``.

    Found with forward hooks, so a module counts as run when its ``__call__`` ran.
    The model's train/eval mode is restored afterwards.
    """
    _check_module(model)
    ran = set()
    handles = [m.register_forward_hook(lambda mod, inp, out: ran.add(id(mod)))
               for m in model.modules()]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example_input.to(_device_of(model)))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {name for name, m in model.named_modules() if id(m) in ran}


def training_only_parameters(model, example_input):
    """``{name: tensor}`` of the parameters and buffers the eval forward does not use.

    A tensor is training-only when every module that owns it directly (shared
    tensors can have several owners) is not called in the eval forward: a
    classifier, critic, discriminator, generator, pairwise head or Grad-CAM
    branch that only ``forward`` in training mode calls. A tensor a module
    owns but only uses in training (a root-level ``nn.Parameter``, say) is not
    seen: the unit is the module.

    A module that computes with some submodules' weights without calling them
    (RGA's factored relations) declares them in ``weights_read_directly``, a
    tuple of submodule names relative to it; they count as run when it runs.
    """
    ran = eval_module_names(model, example_input)
    for mod_name, module in model.named_modules():
        if mod_name in ran:
            prefix = mod_name + '.' if mod_name else ''
            ran.update(prefix + sub for sub in getattr(module, 'weights_read_directly', ()))
    used, unused = set(), {}
    for mod_name, module in model.named_modules():
        tensors = (list(module.named_parameters(recurse=False))
                   + list(module.named_buffers(recurse=False)))
        for name, tensor in tensors:
            if tensor is None:
                continue
            if mod_name in ran:
                used.add(id(tensor))
            else:
                unused.setdefault(id(tensor), ((mod_name + '.' if mod_name else '') + name, tensor))
    return {name: t.detach() for key, (name, t) in unused.items() if key not in used}


def _graph_tensors(onnx_model):
    """``[(name, array)]`` of the graph's initializers and Constant-node values (subgraphs too)."""
    found = []

    def visit(graph):
        for init in graph.initializer:
            found.append((init.name, numpy_helper.to_array(init)))
        for node in graph.node:
            for attr in node.attribute:
                if node.op_type == 'Constant' and attr.name == 'value':
                    found.append((node.output[0], numpy_helper.to_array(attr.t)))
                if attr.type == onnx.AttributeProto.GRAPH:
                    visit(attr.g)
                for g in attr.graphs:
                    visit(g)

    visit(onnx_model.graph)
    return found


def training_only_initializers(model, onnx_path, example_input=None):
    """Graph tensors of ``onnx_path`` that hold a training-only parameter of ``model``.

    Returns a sorted list of ``(graph tensor name, parameter name)``; empty means
    the graph holds none. A graph tensor matches when it equals a parameter of
    :func:`training_only_parameters` exactly (after casting the parameter to
    the tensor's dtype; 2-D tensors also transposed, as ``MatMul`` stores
    them). Constant-valued parameters (a fresh zero bias, a BatchNorm weight
    of ones) carry no identity and are skipped.

    ``onnx_path`` may also be a loaded ``onnx.ModelProto``. ``example_input``
    (N, 3, H, W) runs the eval forward; by default a random batch of the size
    recorded in the file's metadata (or its static input shape).
    """
    onnx_model = onnx_path if isinstance(onnx_path, onnx.ModelProto) else onnx.load(onnx_path)
    if example_input is None:
        height, width = _input_size(onnx_model)
        example_input = torch.randn(EXPORT_BATCH, 3, height, width)
    candidates = {}
    for name, tensor in training_only_parameters(model, example_input).items():
        if not tensor.is_floating_point() or tensor.numel() < 2:
            continue
        values = tensor.float().cpu().numpy()
        if np.all(values == values.flat[0]):
            continue
        candidates.setdefault(values.size, []).append((name, values))
    leaks = set()
    for graph_name, array in _graph_tensors(onnx_model):
        if array.dtype.kind != 'f' or array.size not in candidates:
            continue
        for param_name, values in candidates[array.size]:
            cast = values.astype(array.dtype)
            same = cast.shape == array.shape and np.array_equal(cast, array)
            transposed = (cast.ndim == 2 and cast.T.shape == array.shape
                          and np.array_equal(cast.T, array))
            if same or transposed:
                leaks.add((graph_name, param_name))
    return sorted(leaks)


# ---------------------------------------------------------------------------
# Export


class _Inference(nn.Module):
    """``model(images)`` with the model's other arguments at their defaults.

    Tracing the model itself would make the exporter turn defaults such as
    OSNet's ``return_featuremaps=False`` into traced inputs. With ``fp16``:
    float32 images -> float16 model -> float32 features (I/O stays float32).
    """

    def __init__(self, model, fp16=False):
        super().__init__()
        self.model = model
        self.fp16 = fp16

    def forward(self, images):
        if self.fp16:
            return self.model(images.half()).float()
        return self.model(images)


def _check_module(model):
    if not isinstance(model, nn.Module):
        raise TypeError('Expected a torch.nn.Module to export, got {}'.format(type(model).__name__))


def _device_of(model):
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return torch.device('cpu')


def _versions():
    try:
        import torchreid
        torchreid_version = torchreid.__version__
    except (ImportError, AttributeError):
        torchreid_version = 'unknown'
    return torch.__version__, torchreid_version


def _input_size(onnx_model):
    meta = {p.key: p.value for p in onnx_model.metadata_props}
    if 'height' in meta and 'width' in meta:
        return int(meta['height']), int(meta['width'])
    dims = onnx_model.graph.input[0].type.tensor_type.shape.dim
    if len(dims) == 4 and dims[2].HasField('dim_value') and dims[3].HasField('dim_value'):
        return dims[2].dim_value, dims[3].dim_value
    raise ValueError('Cannot tell the input size of the ONNX graph (no height/width metadata, '
                     'no static input shape): pass example_input')


def _eval_features(model, images):
    try:
        with torch.no_grad():
            out = model(images)
    except Exception as err:
        raise ExportError('The eval-mode forward of {} failed on a {} batch: {}: {}'.format(
            type(model).__name__, tuple(images.shape), type(err).__name__, err)) from err
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != images.shape[0]:
        desc = (tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__)
        raise ExportError('The eval-mode forward must return one (N, D) feature tensor for an '
                          '(N, 3, H, W) batch; got {} for {}'.format(desc, tuple(images.shape)))
    return out


def export_onnx(model, path, height, width, norm_mean, norm_std, opset=17, fp16=False,
                model_name=''):
    """Export ``model``'s inference graph to ``path`` (returned).

    Input ``images``: (N, 3, height, width) float32, RGB scaled to 0-1 then
    normalised with ``norm_mean``/``norm_std`` (torchreid's preprocessing).
    Output ``features``: (N, D) float32. N is dynamic. With ``fp16`` weights and
    arithmetic are float16, I/O stays float32 (see the module docstring).

    The file is written only after ``onnx.checker`` passes and the graph holds
    no training-only parameters (:func:`training_only_initializers`). The
    model's train/eval mode is restored; its weights are not changed.

    Raises:
        TypeError: ``model`` is not a ``torch.nn.Module``.
        ExportError: the export, the checker or the training-only check failed
            (the message says which); nothing is written to ``path``.
    """
    _check_module(model)
    if len(norm_mean) != 3 or len(norm_std) != 3:
        raise ValueError('norm_mean and norm_std need 3 values (RGB), got {} and {}'.format(
            list(norm_mean), list(norm_std)))
    height, width = int(height), int(width)
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(EXPORT_BATCH, 3, height, width, generator=generator)
    was_training = model.training
    model.eval()
    try:
        example = example.to(_device_of(model))
        feature_dim = int(_eval_features(model, example).shape[1])
        net = _Inference(copy.deepcopy(model).half() if fp16 else model, fp16).eval()
        os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
        tmp = '{}.{}.part'.format(osp.abspath(path), os.getpid())
        try:
            try:
                with warnings.catch_warnings():
                    # dynamo=False is deliberate (the dynamo exporter needs onnxscript)
                    for message in ('You are using the legacy TorchScript',
                                    'The feature will be removed'):
                        warnings.filterwarnings('ignore', message=message,
                                                category=DeprecationWarning)
                    torch.onnx.export(
                        net, (example,), tmp, dynamo=False, export_params=True,
                        opset_version=opset, do_constant_folding=True,
                        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                        dynamic_axes={INPUT_NAME: {0: 'batch'}, OUTPUT_NAME: {0: 'batch'}},
                        training=torch.onnx.TrainingMode.EVAL)
            except Exception as err:
                raise ExportError('torch.onnx.export failed for model {!r}{}: {}: {}'.format(
                    model_name or type(model).__name__, ' (fp16)' if fp16 else '',
                    type(err).__name__, err)) from err
            onnx_model = onnx.load(tmp)
            torch_version, torchreid_version = _versions()
            meta = {
                'model_name': model_name or type(model).__name__,
                'input_name': INPUT_NAME, 'output_name': OUTPUT_NAME,
                'input_layout': 'NCHW', 'input_dtype': 'float32', 'output_dtype': 'float32',
                'height': str(height), 'width': str(width),
                'norm_mean': json.dumps([float(v) for v in norm_mean]),
                'norm_std': json.dumps([float(v) for v in norm_std]),
                'colour_order': 'RGB', 'pixel_scaling': PIXEL_SCALING,
                'feature_dim': str(feature_dim), 'precision': 'fp16' if fp16 else 'fp32',
                'opset': str(opset), 'torch_version': torch_version,
                'torchreid_version': torchreid_version, 'exporter': 'plugins.export.export_onnx',
            }
            del onnx_model.metadata_props[:]
            for key in METADATA_KEYS:
                onnx_model.metadata_props.add(key=key, value=meta[key])
            try:
                onnx.checker.check_model(onnx_model, full_check=True)
            except Exception as err:
                raise ExportError('onnx.checker rejected the exported graph of {!r}: {}'.format(
                    meta['model_name'], err)) from err
            leaks = training_only_initializers(model, onnx_model, example)
            if leaks:
                raise ExportError(
                    'The exported graph of {!r} holds {} training-only parameter(s), used by '
                    'modules that do not run in eval mode: {}'.format(
                        meta['model_name'], len(leaks),
                        ', '.join('{} (graph tensor {})'.format(p, g) for g, p in leaks)))
            onnx.save(onnx_model, tmp)
            os.replace(tmp, path)
        finally:
            if osp.exists(tmp):
                os.remove(tmp)
    finally:
        model.train(was_training)
    return path


def read_metadata(path):
    """The ``metadata_props`` of an exported file as a dict (lists and numbers decoded)."""
    onnx_model = onnx.load(path, load_external_data=False)
    return _decode_metadata({p.key: p.value for p in onnx_model.metadata_props})


def _decode_metadata(raw):
    meta = dict(raw)
    for key in ('height', 'width', 'feature_dim', 'opset'):
        if key in meta:
            meta[key] = int(meta[key])
    for key in ('norm_mean', 'norm_std'):
        if key in meta:
            meta[key] = json.loads(meta[key])
    return meta


# ---------------------------------------------------------------------------
# Parity


def _session(path, providers=None, spinning=True):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if not spinning:  # idle onnxruntime threads would busy-wait and slow PyTorch down in between
        options.add_session_config_entry('session.intra_op.allow_spinning', '0')
    return ort.InferenceSession(path, options, providers=providers or ['CPUExecutionProvider'])


def check_parity(model, onnx_path, batches, rtol=FP32_RTOL):
    """Run each batch through onnxruntime (CPU EP) and PyTorch (eval mode); compare features.

    ``batches``: an iterable of (N, 3, H, W) float tensors or arrays, already
    normalised (a single tensor counts as one batch). Per batch,
    ``abs = max |onnx - torch|`` and ``rel = abs / max |torch|``.

    Returns ``{'max_abs_diff', 'max_rel_diff', 'rtol', 'num_batches', 'num_images',
    'feature_dim', 'batches': [{'size', 'abs', 'rel'}, ...]}`` (max over batches).

    Raises:
        ExportParityError: a batch's relative difference is above ``rtol``, a
            shape differs, or either side returned NaN/inf (counted as infinite).
    """
    _check_module(model)
    if isinstance(batches, (torch.Tensor, np.ndarray)):
        batches = [batches]
    session = _session(os.fspath(onnx_path), spinning=False)
    input_name = session.get_inputs()[0].name
    was_training = model.training
    model.eval()
    report = {'max_abs_diff': 0.0, 'max_rel_diff': 0.0, 'rtol': rtol, 'num_batches': 0,
              'num_images': 0, 'feature_dim': None, 'batches': []}
    try:
        for index, batch in enumerate(batches):
            images = torch.as_tensor(batch, dtype=torch.float32)
            expected = _eval_features(model, images.to(_device_of(model))).float().cpu().numpy()
            got = session.run(None, {input_name: np.ascontiguousarray(images.cpu().numpy())})[0]
            if got.shape != expected.shape:
                raise ExportParityError('Batch {}: onnxruntime features have shape {}, PyTorch {}'
                                        .format(index, got.shape, expected.shape), report)
            diff = np.abs(got.astype(np.float64) - expected.astype(np.float64))
            abs_diff = float(diff.max()) if diff.size else 0.0
            scale = float(np.abs(expected).max()) if expected.size else 0.0
            if not np.isfinite(abs_diff):
                rel_diff = float('inf')
            elif abs_diff == 0:
                rel_diff = 0.0
            else:
                rel_diff = abs_diff / scale if scale > 0 else float('inf')
            report['batches'].append(
                {'size': int(images.shape[0]), 'abs': abs_diff, 'rel': rel_diff})
            report['max_abs_diff'] = max(report['max_abs_diff'], abs_diff)
            report['max_rel_diff'] = max(report['max_rel_diff'], rel_diff)
            report['num_batches'] += 1
            report['num_images'] += int(images.shape[0])
            report['feature_dim'] = int(expected.shape[1])
            if not rel_diff <= rtol:
                raise ExportParityError(
                    'ONNX/PyTorch parity failed for {} on batch {} ({} images): max abs diff '
                    '{:.3g}, max rel diff {:.3g} (= abs diff / max|torch|, max|torch| = {:.3g}) '
                    '> tolerance {:g}'.format(os.fspath(onnx_path), index, images.shape[0],
                                              abs_diff, rel_diff, scale, rtol), report)
    finally:
        model.train(was_training)
    if not report['num_batches']:
        raise ValueError('check_parity needs at least one batch')
    return report


# ---------------------------------------------------------------------------
# Deployment-side feature extraction


class OnnxFeatureExtractor:
    """torchreid's ``FeatureExtractor`` for an exported file, on onnxruntime.

    Accepts what ``torchreid.reid.utils.FeatureExtractor`` accepts: a list of
    image paths, a list of (H, W, 3) uint8 RGB arrays, a single path or array,
    or a float tensor (B, 3, H, W) / (3, H, W) already normalised. Images are
    preprocessed exactly as there (PIL ``Resize((height, width))``,
    ``ToTensor``, ``Normalize(norm_mean, norm_std)``) with the values read
    from the file's metadata. Returns a float32 ``torch.Tensor`` (B, D).

    Args:
        path: an ``.onnx`` file written by :func:`export_onnx`.
        providers: onnxruntime execution providers (default CPU).
        batch_size: run at most this many images per onnxruntime call (None: all at once).
        flip: each feature is the mean of the image's and its mirror's (``test.flip``).
    """

    def __init__(self, path, providers=None, batch_size=None, flip=False):
        import torchvision.transforms as T

        if not osp.isfile(path):
            raise FileNotFoundError('ONNX file not found: "{}"'.format(path))
        self.path = path
        self.session = _session(path, providers)
        self.metadata = _decode_metadata(self.session.get_modelmeta().custom_metadata_map)
        required = ('height', 'width', 'norm_mean', 'norm_std')
        missing = [k for k in required if k not in self.metadata]
        if missing:
            raise ValueError('"{}" lacks the metadata {} (export it with '
                             'plugins.export.export_onnx)'.format(path, missing))
        self.image_size = (self.metadata['height'], self.metadata['width'])
        self.input_name = self.session.get_inputs()[0].name
        self.batch_size = batch_size
        self.flip = flip
        self.preprocess = T.Compose([
            T.Resize(self.image_size), T.ToTensor(),
            T.Normalize(mean=self.metadata['norm_mean'], std=self.metadata['norm_std'])])
        self.to_pil = T.ToPILImage()

    def _load(self, element):
        from PIL import Image

        if isinstance(element, str):
            image = Image.open(element).convert('RGB')
        elif isinstance(element, np.ndarray):
            image = self.to_pil(element)
        else:
            raise TypeError('Type of each element must belong to [str | numpy.ndarray], got {}'
                            .format(type(element).__name__))
        return self.preprocess(image)

    def __call__(self, input):
        if isinstance(input, list):
            if not input:
                raise ValueError('OnnxFeatureExtractor got an empty list')
            images = torch.stack([self._load(e) for e in input], dim=0)
        elif isinstance(input, (str, np.ndarray)):
            images = self._load(input).unsqueeze(0)
        elif isinstance(input, torch.Tensor):
            images = input.unsqueeze(0) if input.dim() == 3 else input
        else:
            raise NotImplementedError('Unsupported input type {}'.format(type(input).__name__))
        images = images.detach().cpu().float()
        if self.flip:
            return flip_averaged(self._run, images)
        return self._run(images)

    def _run(self, images):
        images = np.ascontiguousarray(images.numpy())
        step = self.batch_size or len(images)
        outputs = [self.session.run(None, {self.input_name: images[i:i + step]})[0]
                   for i in range(0, len(images), step)]
        return torch.from_numpy(np.concatenate(outputs, axis=0))
