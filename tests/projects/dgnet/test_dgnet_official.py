"""The DG-Net official check without a clone of NVlabs/DG-Net: the tool's message for a folder
that is not a clone, and the name mapping onto the official tensors covers all of ours."""
import importlib
import sys

import pytest

from projects.dgnet.networks import AppearanceEncoder, Generator, MultiScaleDiscriminator
from projects.dgnet.official import NUM_CLASSES, official_name

from tests.helpers import load_tool

NETWORKS = [('E_a', lambda: AppearanceEncoder(NUM_CLASSES)), ('generator', Generator),
            ('D', MultiScaleDiscriminator)]


def test_a_folder_that_is_not_a_clone_names_the_repository_and_a_missing_file(tmp_path):
    with pytest.raises(SystemExit) as stop:
        load_tool('check_official').main(['--method', 'dgnet', '--official-dir', str(tmp_path)])
    message = str(stop.value.code)
    assert 'https://github.com/NVlabs/DG-Net' in message
    assert 'trainer.py' in message and 'reIDmodel.py' in message


def test_importing_the_project_imports_no_official_code():
    importlib.import_module('projects.dgnet')
    assert not {'trainer', 'reIDmodel', 'random_erasing'} & set(sys.modules)


@pytest.mark.parametrize('network, build', NETWORKS, ids=[n for n, _ in NETWORKS])
def test_every_parameter_and_buffer_of_ours_has_its_own_official_name(network, build):
    ours = list(build().state_dict())
    official = [official_name(network, name) for name in ours]
    assert len(set(official)) == len(ours)


@pytest.mark.parametrize('network, ours, official', [
    ('E_a', 'trunk.stem.1.running_var', 'model.bn1.running_var'),
    ('E_a', 'trunk.stages.3.0.downsample.1.num_batches_tracked', 'model.layer4.0.downsample.1.num_batches_tracked'),
    ('E_a', 'primary.embedding.1.weight', 'classifier1.add_block.1.weight'),
    ('E_a', 'fine.classifier.bias', 'classifier2.classifier.0.bias'),
    ('generator', 'structure_encoder.layers.13.weight', 'enc_content.model.3.conv.weight'),
    ('generator', 'structure_encoder.layers.19.body.5.bias', 'enc_content.model.4.model.3.model.1.conv.bias'),
    ('generator', 'structure_encoder.layers.20.atrous.2.4.weight', 'enc_content.model.5.conv18.1.conv.weight'),
    ('generator', 'adain_mlps.bias_mlps.3.4.weight', 'mlp_b4.model.2.fc.weight'),
    ('generator', 'decoder.blocks.2.conv2.1.weight', 'dec.model.1.model.2.model.1.conv.weight'),
    ('generator', 'decoder.to_image.4.gamma', 'dec.model.5.norm.gamma'),
    ('generator', 'decoder.to_image.12.bias', 'dec.model.8.conv.bias'),
    ('D', 'scales.1.12.weight', 'cnns.1.4.conv.weight'),
    ('D', 'scales.2.17.body.4.bias', 'cnns.2.8.model.1.conv.bias'),
    ('D', 'scales.0.18.weight', 'cnns.0.9.weight'),
])
def test_names_follow_the_official_modules(network, ours, official):
    assert official_name(network, ours) == official


def test_a_name_without_an_official_counterpart_is_an_error():
    with pytest.raises(KeyError, match='no official counterpart'):
        official_name('generator', 'structure_encoder.layers.2.weight')  # an InstanceNorm index: no tensor
    with pytest.raises(KeyError, match='no official counterpart'):
        official_name('D', 'scales.0.0.extra.weight')
