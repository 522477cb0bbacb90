"""Offline ImageNet weights: look in local places, never download.

torchreid's builders fetch ImageNet weights from the network (``model_zoo.load_url``
for ResNet-style models, ``gdown`` for OSNet). Without a network that hangs or
crashes. :func:`offline_pretrained` intercepts both fetchers while a model is
built: the file is taken from ``model.pretrained_path`` (a file, or a folder
holding it) or from torch's hub cache, and otherwise the build stops with a
message naming the file to place and where.
"""
import contextlib
import os
import os.path as osp
import shutil
from urllib.parse import urlparse

import torch


class PretrainedWeightsNotFound(FileNotFoundError):
    pass


def cache_dirs():
    """Folders torch and torchreid look in for downloaded weights."""
    torch_home = osp.expanduser(
        os.getenv('TORCH_HOME', osp.join(os.getenv('XDG_CACHE_HOME', '~/.cache'), 'torch'))
    )
    dirs = [osp.join(torch.hub.get_dir(), 'checkpoints'), osp.join(torch_home, 'checkpoints')]
    return list(dict.fromkeys(dirs))


def find_weights_file(filenames, pretrained_path=''):
    """Return the first existing local copy of any of ``filenames``.

    ``pretrained_path`` may be the file itself (used whatever its name) or a
    folder; the hub cache folders are searched after it.

    Raises:
        PretrainedWeightsNotFound: naming the files, the folders searched and the way out.
    """
    if pretrained_path and osp.isfile(pretrained_path):
        return pretrained_path
    folders = ([pretrained_path] if pretrained_path else []) + cache_dirs()
    for folder in folders:
        for name in filenames:
            candidate = osp.join(folder, name)
            if osp.isfile(candidate):
                return candidate
    raise PretrainedWeightsNotFound(
        'Pretrained weights not found: place {} in {} (or point model.pretrained_path at the '
        'file), or set model.pretrained False to train from scratch. Nothing is downloaded.'.format(
            ' or '.join('"{}"'.format(n) for n in filenames),
            ' or '.join('"{}"'.format(f) for f in folders),
        )
    )


def load_state_dict_file(path):
    """Load a weights file safely (``weights_only``); unwraps ``{'state_dict': ...}``."""
    state = torch.load(path, map_location='cpu', weights_only=True)
    if isinstance(state, dict) and 'state_dict' in state:
        state = state['state_dict']
    return {(k[len('module.'):] if k.startswith('module.') else k): v for k, v in state.items()}


def load_matching_weights(model, path):
    """Copy every tensor of ``path`` whose name and shape match ``model``; return (matched, skipped)."""
    own = model.state_dict()
    loaded = load_state_dict_file(path)
    matched = {k: v for k, v in loaded.items() if k in own and own[k].shape == v.shape}
    if not matched:
        raise ValueError('No tensor in "{}" matches the model\'s names and shapes'.format(path))
    own.update(matched)
    model.load_state_dict(own)
    return sorted(matched), sorted(set(loaded) - set(matched))


@contextlib.contextmanager
def offline_pretrained(pretrained_path=''):
    """Serve the host's weight downloads from local files while the block runs."""
    import gdown
    import torch.utils.model_zoo as model_zoo

    def load_url(url, model_dir=None, map_location=None, progress=True, check_hash=False,
                 file_name=None, weights_only=True):
        name = file_name or osp.basename(urlparse(url).path)
        return load_state_dict_file(find_weights_file([name], pretrained_path))

    def download(url=None, output=None, *args, **kwargs):
        # torchreid's OSNet calls gdown only when its cache file is missing.
        found = find_weights_file([osp.basename(output)], pretrained_path)
        shutil.copyfile(found, output)
        return output

    saved = (model_zoo.load_url, torch.hub.load_state_dict_from_url, gdown.download)
    model_zoo.load_url = torch.hub.load_state_dict_from_url = load_url
    gdown.download = download
    try:
        yield
    finally:
        model_zoo.load_url, torch.hub.load_state_dict_from_url, gdown.download = saved
