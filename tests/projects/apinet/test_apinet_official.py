"""The API-Net official check without a clone: a wrong folder is refused clearly, the name
mapping covers our models' tensors (against torchvision's ResNet-101, the official trunk)
and fails loudly on gaps, and the reproduced official loss lines agree with ours."""
import numpy as np
import pytest
import torch
import torchvision

from plugins.benchmarking.official import copy_parameters
from projects.apinet import official
from projects.apinet.losses import pair_cross_entropy, score_ranking_loss
from projects.apinet.model import APINet
from tests.helpers import load_tool

REPOSITORY = 'PeiqinZhuang/API-Net'
# the official API_Net's head (models.py): map1 Linear(2048 * 2, 512), map2 Linear(512, 2048),
# fc Linear(2048, 200)
OFFICIAL_HEAD = {'map1.weight': (512, 4096), 'map1.bias': (512,), 'map2.weight': (2048, 512),
                 'map2.bias': (2048,), 'fc.weight': (200, 2048), 'fc.bias': (200,)}


def official_shapes():
    """Official state-dict names and shapes: its trunk is torchvision's ResNet-101 children
    without avgpool and fc, held in an nn.Sequential called ``conv``."""
    children = list(torchvision.models.resnet101(weights=None).children())[:-2]
    shapes = {'conv.{}.{}'.format(i, k): tuple(v.shape)
              for i, child in enumerate(children) for k, v in child.state_dict().items()}
    return dict(shapes, **OFFICIAL_HEAD)


@pytest.mark.parametrize('files', [(), ('models.py',)])
def test_a_folder_without_the_markers_is_refused_naming_the_repository(tmp_path, files):
    for name in files:
        (tmp_path / name).write_text('')
    with pytest.raises(SystemExit) as exit_info:
        load_tool('check_official').main(['--method', 'apinet', '--official-dir', str(tmp_path)])
    message = str(exit_info.value.code)
    assert REPOSITORY in message and 'is not a clone' in message
    assert 'has no {}'.format('train.py' if files else 'models.py, train.py') in message


def test_the_mapping_covers_every_official_and_every_our_tensor_with_equal_shapes():
    shapes = official_shapes()
    ours = APINet(200, 'triplet', depth='resnet101', last_stride=2, bnneck=False)
    our_shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    pairs = official.map_names(shapes, our_shapes)
    assert len(pairs) == len(shapes) == len(our_shapes)
    assert {o for o, _ in pairs} == set(our_shapes)
    assert all(our_shapes[o] == shapes[n] for o, n in pairs), [
        (o, n) for o, n in pairs if our_shapes[o] != shapes[n]]
    assert ('trunk.stages.3.2.bn3.running_var', 'conv.7.2.bn3.running_var') in pairs
    assert ('api.mutual.2.weight', 'map2.weight') in pairs
    assert ('head.classifier.1.bias', 'fc.bias') in pairs


def test_the_head_mapping_of_our_reid_default():
    ours = APINet(200, 'triplet')  # apinet_resnet50: ResNet-50, last stride 1, BNNeck
    pairs = official.map_names(official_shapes(), dict(ours.named_parameters()), head_only=True)
    assert sorted(n for _, n in pairs) == sorted(OFFICIAL_HEAD)
    assert {o for o, _ in pairs} == {'api.mutual.0.weight', 'api.mutual.0.bias', 'api.mutual.2.weight',
                                     'api.mutual.2.bias', 'head.classifier.1.weight',
                                     'head.classifier.1.bias'}


def test_gaps_and_shape_mismatches_fail_loudly():
    ours = APINet(200, 'triplet', depth='resnet101', last_stride=2, bnneck=False)
    our_names = list(ours.state_dict())
    shapes = official_shapes()
    with pytest.raises(ValueError, match=r'no counterpart in ours: conv\.8\.weight'):
        official.map_names(dict(shapes, **{'conv.8.weight': ()}), our_names)
    with pytest.raises(ValueError, match=r'conv\.4\.0\.conv1\.weight'):  # ours lacks its target
        official.map_names(shapes, [n for n in our_names if n != 'trunk.stages.0.0.conv1.weight'])
    no_fc = {k: v for k, v in shapes.items() if k != 'fc.bias'}
    with pytest.raises(ValueError, match=r'no official tensor maps onto: head\.classifier\.1\.bias'):
        official.map_names(no_fc, our_names)
    small = APINet(6, 'triplet', depth='resnet50', last_stride=2, bnneck=False)
    with pytest.raises(ValueError, match=r'cannot map official fc\.weight \(200, 2048\)'):
        copy_parameters([(small.head.classifier[1].weight, torch.zeros(200, 2048), 'fc.weight')])


def test_the_official_loss_lines_agree_with_ours_on_valid_pairs():
    g = torch.Generator().manual_seed(0)
    logits = [torch.randn(6, 5, generator=g, dtype=torch.float64) for _ in range(4)]
    labels1, labels2 = torch.tensor([0, 1, 2, 0, 1, 2]), torch.tensor([1, 1, 0, 3, 4, 2])
    ce, rank, total, _, _ = official.official_losses(*logits, labels1, labels2)
    self_logits, other_logits = torch.cat([logits[0], logits[2]]), torch.cat([logits[1], logits[3]])
    labels, valid = torch.cat([labels1, labels2]), torch.ones(12, dtype=torch.bool)
    assert torch.allclose(ce, pair_cross_entropy(self_logits, other_logits, labels, valid), atol=1e-14)
    assert torch.allclose(rank, score_ranking_loss(self_logits, other_logits, labels, valid), atol=1e-14)
    assert torch.allclose(total, ce + rank)


def test_a_train_py_without_the_followed_loss_lines_is_refused(tmp_path):
    (tmp_path / 'train.py').write_text('criterion = nn.CrossEntropyLoss()\n')
    with pytest.raises(ValueError, match='MarginRankingLoss'):
        official.check_train_source(str(tmp_path))


def test_the_numpy_shim_takes_a_one_element_array_as_an_element():
    shim = official._numpy_with_scalar_elements()
    labels = np.array([[3], [5]])
    pairs = shim.zeros([2, 2])
    pairs[1, 0] = labels[1]
    assert pairs[1, 0] == 5 and shim.inf == np.inf and torch.from_numpy(pairs).long()[1, 0] == 5
