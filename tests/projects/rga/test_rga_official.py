"""The RGA official check without a clone: a wrong folder is refused clearly, and the
name mapping covers every tensor of our three models and fails loudly on gaps."""
import re

import pytest
import torch
import torch.nn as nn

from plugins.benchmarking.official import copy_parameters
from projects.rga.model import RGANet
from projects.rga.official import mapped_pairs, official_name
from tests.helpers import load_tool

REPOSITORY = 'microsoft/Relation-Aware-Global-Attention-Networks'
# the official ResNet50_RGA_Model's top-level names (rga_model.py, rga_branches.py)
OFFICIAL_KEY = re.compile(r'(backbone\.(conv1|bn1|layer[1-4]\.\d+|rga_att[1-4])|feat_bn|cls)\.')


def test_an_empty_folder_is_refused_naming_the_repository_and_a_marker(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        load_tool('check_official').main(['--method', 'rga', '--official-dir', str(tmp_path)])
    message = str(exit_info.value.code)
    assert REPOSITORY in message
    assert 'reid/models/rga_model.py' in message and 'is not a clone' in message


@pytest.mark.parametrize('variant', ['s', 'c', 'sc'])
def test_the_mapping_covers_every_parameter_and_buffer_once(variant):
    keys = list(RGANet(751, 'triplet', variant).state_dict())  # the official 256x128
    mapped = [official_name(k) for k in keys]
    assert len(set(mapped)) == len(keys)  # one official tensor per ours
    assert all(OFFICIAL_KEY.match(k) for k in mapped), [k for k in mapped if not OFFICIAL_KEY.match(k)]
    assert {'backbone.conv1.weight', 'backbone.bn1.running_var', 'backbone.layer4.0.downsample.0.weight',
            'backbone.layer1.2.bn3.num_batches_tracked', 'feat_bn.bias', 'cls.weight'} <= set(mapped)
    branches = {'s': ['spatial'], 'c': ['channel'], 'sc': ['spatial', 'channel']}[variant]
    for stage in range(1, 5):
        for branch in branches:
            for part in ('theta', 'phi', 'gx', 'gg'):
                assert 'backbone.rga_att{}.{}_{}.0.weight'.format(stage, part, branch) in mapped
            assert 'backbone.rga_att{}.W_{}.4.running_mean'.format(stage, branch) in mapped


def test_a_name_without_official_counterpart_is_an_error():
    with pytest.raises(KeyError, match='head.extra.weight'):
        official_name('head.extra.weight')


def _stand_in(tensors):
    """A module whose state dict is ``tensors`` (dotted names), like the official model's."""
    root = nn.Module()
    for name, tensor in tensors.items():
        *path, leaf = name.split('.')
        module = root
        for part in path:
            if not hasattr(module, part):
                module.add_module(part, nn.Module())
            module = getattr(module, part)
        module.register_buffer(leaf, tensor.clone())
    return root


def test_gaps_and_shape_mismatches_fail_loudly():
    ours = RGANet(5, 'triplet', 'sc', height=64, width=32)  # the mapping does not depend on the size
    official = {official_name(k): v for k, v in ours.state_dict().items()}
    pairs = mapped_pairs(ours, _stand_in(official))
    assert len(pairs) == len(official)
    copy_parameters(pairs)  # shapes agree

    missing = dict(official)
    del missing['backbone.rga_att2.gg_channel.0.weight']
    with pytest.raises(ValueError, match=r"rga\.1\.gg_channel\.0\.weight"):
        mapped_pairs(ours, _stand_in(missing))
    extra = dict(official, **{'backbone.rga_att2.extra': torch.zeros(1)})
    with pytest.raises(ValueError, match=r'backbone\.rga_att2\.extra'):
        mapped_pairs(ours, _stand_in(extra))
    wrong = dict(official, **{'cls.weight': torch.zeros(6, 2048)})
    with pytest.raises(ValueError, match=r'cls\.weight \(6, 2048\)'):
        copy_parameters(mapped_pairs(ours, _stand_in(wrong)))
