"""Safe, atomic checkpoints (host fix for torch >= 2.6 and plain-number metadata).

torchreid saves ``rank1`` as a numpy scalar and loads with ``torch.load``'s
default, which since torch 2.6 is ``weights_only=True`` and refuses numpy
scalars. We never turn safety off: new checkpoints hold plain Python numbers,
and legacy ones load through an explicit allow-list of numpy scalar types.
"""
import copy
import os
import os.path as osp
import shutil
import tempfile

import numpy as np
import torch


def _numpy_scalar_allowlist():
    """Globals a legacy torchreid checkpoint needs to rebuild numpy scalars."""
    scalar = np._core.multiarray.scalar
    allowed = [
        (scalar, 'numpy.core.multiarray.scalar'),
        (scalar, 'numpy._core.multiarray.scalar'),
        np.dtype,
    ]
    for name in ('Float64DType', 'Float32DType', 'Int64DType', 'Int32DType', 'BoolDType'):
        allowed.append(getattr(np.dtypes, name))
    return allowed


def load_checkpoint(fpath, map_location='cpu'):
    """Load a checkpoint with ``weights_only=True``; numpy scalars are allowed, nothing else.

    Raises:
        FileNotFoundError: naming the missing file.
    """
    if not fpath or not osp.isfile(fpath):
        raise FileNotFoundError('Checkpoint file not found: "{}"'.format(fpath))
    with torch.serialization.safe_globals(_numpy_scalar_allowlist()):
        return torch.load(fpath, map_location=map_location, weights_only=True)


def plain(value):
    """Turn numpy/tensor scalars into Python numbers so checkpoints stay weights-only loadable."""
    if isinstance(value, (torch.Tensor, np.generic)) and np.size(value) == 1:
        return value.item()
    return value


def atomic_save(obj, fpath):
    """``torch.save`` to a temporary file in the same folder, then rename over ``fpath``."""
    folder = osp.dirname(osp.abspath(fpath))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='tmp-', suffix='.part', dir=folder)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, fpath)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)


def on_cpu(obj):
    """``obj`` with every tensor inside (dicts, lists, tuples) copied to the CPU; containers
    keep their type and extras (a scheduler's ``Counter`` of milestones, a state dict's
    ``_metadata``)."""
    if torch.is_tensor(obj):
        return obj.cpu()
    if isinstance(obj, dict):
        out = copy.copy(obj)
        for key, value in obj.items():
            out[key] = on_cpu(value)
        return out
    if isinstance(obj, tuple) and hasattr(obj, '_fields'):  # a namedtuple
        return type(obj)(*(on_cpu(v) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(on_cpu(v) for v in obj)
    return obj


def save_checkpoint(state, save_dir, is_best=False, remove_module_from_keys=False, name=None):
    """Drop-in for torchreid's ``save_checkpoint``: plain numbers, tensors on the CPU (a
    GPU run's checkpoint loads with a plain ``torch.load`` anywhere), atomic write.

    Writes ``save_dir/<name>`` (default ``model.pth.tar-<epoch>``) and, when
    ``is_best``, copies it to ``model-best.pth.tar``. Returns the path written.
    """
    state = {k: (plain(v) if k not in ('state_dict', 'optimizer', 'scheduler') else v)
             for k, v in on_cpu(state).items()}
    if remove_module_from_keys:
        state['state_dict'] = {
            (k[len('module.'):] if k.startswith('module.') else k): v
            for k, v in state['state_dict'].items()
        }
    fpath = osp.join(save_dir, name or 'model.pth.tar-{}'.format(state['epoch']))
    atomic_save(state, fpath)
    print('Checkpoint saved to "{}"'.format(fpath))
    if is_best:
        shutil.copy(fpath, osp.join(save_dir, 'model-best.pth.tar'))
    return fpath


def install():
    """Point the host's checkpoint functions at ours (idempotent).

    ``load_pretrained_weights``, ``resume_from_checkpoint`` and
    ``FeatureExtractor`` call ``load_checkpoint`` through the ``torchtools``
    module, and ``Engine.save_model`` calls ``save_checkpoint`` through the
    engine module, so those are the names replaced.
    """
    from torchreid.reid import utils
    from torchreid.reid.engine import engine
    from torchreid.reid.utils import torchtools

    for module in (torchtools, utils):
        module.load_checkpoint = load_checkpoint
        module.save_checkpoint = save_checkpoint
    engine.save_checkpoint = save_checkpoint


def load_weights_strict(model, fpath):
    """Load a checkpoint's weights into ``model``; every key must match (tools need exact models)."""
    state = load_checkpoint(fpath)
    state = state.get('state_dict', state)
    state = {(k[len('module.'):] if k.startswith('module.') else k): v for k, v in state.items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError('Weights "{}" do not fit the model built from the config: {}'.format(
            fpath, err)) from None
    return model
