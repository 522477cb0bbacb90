import os
import pickle

import numpy as np
import pytest
import torch
from torchreid.reid.utils import load_pretrained_weights, resume_from_checkpoint

from plugins.training.checkpoint import atomic_save, load_checkpoint, save_checkpoint
from tests.helpers import TinyReIDNet


def test_saved_metadata_is_plain_python_and_loads_weights_only(tmp_path):
    model = TinyReIDNet()
    path = save_checkpoint({'state_dict': model.state_dict(), 'epoch': np.int64(3),
                            'rank1': np.float32(0.25)}, str(tmp_path), is_best=True)
    raw = torch.load(path, weights_only=True)  # plain torch, no allow-list needed
    assert type(raw['rank1']) is float and type(raw['epoch']) is int and raw['epoch'] == 3
    assert os.path.isfile(tmp_path / 'model-best.pth.tar')
    assert not [f for f in os.listdir(tmp_path) if f.endswith('.part')]


def test_legacy_checkpoint_with_numpy_scalars_loads_through_allow_list(tmp_path):
    model = TinyReIDNet()
    legacy = tmp_path / 'legacy.pth.tar'
    torch.save({'state_dict': model.state_dict(), 'epoch': 5, 'rank1': np.float64(0.5),
                'mAP': np.float32(0.25)}, legacy)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(legacy, weights_only=True)  # what the host does on torch >= 2.6
    ckpt = load_checkpoint(str(legacy))
    assert ckpt['rank1'] == 0.5 and ckpt['epoch'] == 5
    # the host's own helpers go through the fixed loader once plugins is imported
    assert resume_from_checkpoint(str(legacy), TinyReIDNet()) == 5
    load_pretrained_weights(TinyReIDNet(), str(legacy))


class Payload:
    pass


def test_arbitrary_objects_are_still_refused(tmp_path):
    path = tmp_path / 'evil.pth'
    torch.save({'state_dict': {}, 'x': Payload()}, path)
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(str(path))


def test_missing_checkpoint_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match='nothing.pth'):
        load_checkpoint(str(tmp_path / 'nothing.pth'))


def test_atomic_save_keeps_previous_file_when_saving_fails(tmp_path):
    path = str(tmp_path / 'ckpt.pth')
    atomic_save({'a': torch.ones(1)}, path)

    class Unsaveable:
        def __reduce__(self):
            raise RuntimeError('disk full')

    with pytest.raises(RuntimeError, match='disk full'):
        atomic_save({'a': Unsaveable()}, path)
    assert torch.equal(torch.load(path, weights_only=True)['a'], torch.ones(1))
    assert os.listdir(tmp_path) == ['ckpt.pth']


def test_saved_scheduler_keeps_its_milestones(tmp_path):
    """Checkpoints copy tensors to the CPU without rebuilding containers: MultiStepLR's
    milestones are a Counter, which a rebuild from pairs would corrupt."""
    param = torch.nn.Parameter(torch.ones(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[2, 4], gamma=0.1)
    path = save_checkpoint({'state_dict': {'w': param.detach()}, 'epoch': 1,
                            'scheduler': scheduler.state_dict()}, str(tmp_path))
    restored = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[99], gamma=0.1)
    restored.load_state_dict(load_checkpoint(path)['scheduler'])
    assert restored.milestones == scheduler.milestones
    for _ in range(2):
        restored.step()
    assert optimizer.param_groups[0]['lr'] == pytest.approx(0.1)
