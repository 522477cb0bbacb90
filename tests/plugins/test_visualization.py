"""Grad-CAM, the attention-map registry, PNG overlays/grids/ranked lists and tools/visualize.py."""
import os

import numpy as np
import pytest
import torch
import torch.nn as nn
import torchreid
from PIL import Image

import plugins
from plugins import visualization as V
from plugins.training.launch import build_datamanager, setup_config
from plugins.nn.models import build_model
from tests.helpers import TINY_SYNTHREID, load_tool, run_tool, snapshot

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class CamNet(nn.Module):
    """conv -> BN -> ReLU -> global average pool -> linear, with torchreid's train/eval contract."""

    def __init__(self, num_classes=4, channels=6):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.BatchNorm2d(channels),
                                      nn.ReLU(inplace=True))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.5)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x):
        v = self.pool(self.features(x)).flatten(1)
        if not self.training:
            return v
        return self.classifier(self.dropout(v))


def make_camnet(num_classes=4, seed=0):
    torch.manual_seed(seed)
    net = CamNet(num_classes)
    bn = net.features[1]
    with torch.no_grad():  # non-trivial running stats, so a training-mode BN would differ
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    return net


def expected_cam(net, images, weights_fn):
    """Hand Grad-CAM at ``features``: the score's gradient w.r.t. A_k(x, y) is w_k / (h*w)."""
    with torch.no_grad():
        net_mode = net.training
        net.eval()
        act = net.features(images)  # (N, C, h, w), post-ReLU, eval BN
        net.train(net_mode)
    h, w = act.shape[2:]
    cams = []
    for i in range(images.size(0)):
        weights = weights_fn(i, act[i]) / (h * w)  # (C,)
        cam = torch.relu((weights[:, None, None] * act[i]).sum(0))
        lo, hi = cam.min(), cam.max()
        cams.append((cam - lo) / (hi - lo) if hi > lo else torch.zeros_like(cam))
    return torch.stack(cams), act


def assert_no_hooks(model):
    for name, m in model.named_modules():
        for attr in ('_forward_hooks', '_forward_pre_hooks', '_backward_hooks',
                     '_backward_pre_hooks', '_state_dict_hooks'):
            assert not getattr(m, attr, {}), (name, attr)
    for p in model.parameters():
        assert p.grad is None


def images(n=3, h=12, w=8, seed=1):
    return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------
# Grad-CAM
# ---------------------------------------------------------------------------------------------
def test_grad_cam_equals_hand_computation_for_chosen_and_argmax_class():
    net, x = make_camnet(), images()
    W = net.classifier.weight.detach()

    gt = torch.tensor([2, 0, 3])
    expected, act = expected_cam(net, x, lambda i, a: W[gt[i]])
    maps, info = V.grad_cam(net, x, class_idx=gt, return_info=True)
    assert info['layer'] == 'features' and info['score'] == 'logits'
    assert maps.shape == (3, 12, 8)
    assert torch.allclose(maps, expected, atol=1e-5)
    assert torch.equal(info['classes'], gt)

    # argmax of W v + b, computed by hand from the pooled activations
    logits = act.mean(dim=(2, 3)) @ W.T + net.classifier.bias.detach()
    top = logits.argmax(1)
    expected_top, _ = expected_cam(net, x, lambda i, a: W[top[i]])
    maps, info = V.grad_cam(net, x, return_info=True)
    assert torch.equal(info['classes'], top)
    assert torch.allclose(maps, expected_top, atol=1e-5)
    # a single int applies to every image; a different class gives a different map
    assert torch.allclose(V.grad_cam(net, x, class_idx=1), expected_cam(net, x, lambda i, a: W[1])[0],
                          atol=1e-5)
    other = (top + 1) % 4
    assert not torch.allclose(V.grad_cam(net, x, class_idx=other), expected_top, atol=1e-3)


def test_grad_cam_falls_back_to_feature_norm_without_logits():
    """num_classes == 1: score = ||v||, so d score / d A_k = v_k / ||v|| / (h*w)."""
    net, x = make_camnet(num_classes=1), images()
    with torch.no_grad():
        v = net.eval()(x)
    expected, _ = expected_cam(net, x, lambda i, a: v[i] / v[i].norm())
    with pytest.warns(UserWarning, match='L2 norm of the eval feature'):
        maps, info = V.grad_cam(net, x, return_info=True)
    assert info['score'] == 'feature_norm' and info['classes'] is None
    assert torch.allclose(maps, expected, atol=1e-5)


def test_grad_cam_leaves_model_untouched():
    net, x = make_camnet(), images(4)
    net.train()
    net.classifier.eval()  # a mixed mode pattern that must come back exactly
    modes = {n: m.training for n, m in net.named_modules()}
    before = snapshot(net)
    x_before = x.clone()
    maps = V.grad_cam(net, x)
    assert maps.shape == (4, 12, 8) and maps.dtype == torch.float32
    assert float(maps.min()) >= 0 and float(maps.max()) <= 1 and float(maps.max()) == 1
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # params + BN stats + counters
    assert {n: m.training for n, m in net.named_modules()} == modes
    assert_no_hooks(net)
    assert torch.equal(x, x_before) and not x.requires_grad
    # deterministic: dropout and BN were in eval mode
    assert torch.equal(V.grad_cam(net, x), maps)
    # and the same with an explicit layer and a frozen model
    for p in net.parameters():
        p.requires_grad_(False)
    maps2 = V.grad_cam(net, x, target_layer='features.2')
    assert torch.allclose(maps2, maps, atol=1e-6)  # same tensor (ReLU output) as 'features'
    assert_no_hooks(net)
    assert all(not p.requires_grad for p in net.parameters())


class CountingNet(CamNet):
    """Keeps state updated in training mode (like a memory bank): Grad-CAM must restore it."""

    def __init__(self):
        super().__init__()
        self.register_buffer('train_calls', torch.zeros((), dtype=torch.long))

    def forward(self, x):
        if self.training:
            self.train_calls += 1
        return super().forward(x)


def test_grad_cam_restores_buffers_a_training_forward_changes():
    torch.manual_seed(0)
    net = CountingNet().eval()
    V.grad_cam(net, images())
    assert int(net.train_calls) == 0
    net.train()(images())
    assert int(net.train_calls) == 1  # the counter does count training forwards


@pytest.mark.parametrize('name, layer, size', [('resnet18', 'layer4', (4, 2)),
                                               ('osnet_x0_25', 'conv5', (8, 4))])
def test_grad_cam_on_torchreid_models(name, layer, size):
    torch.manual_seed(0)
    model = torchreid.models.build_model(name, num_classes=7, loss='softmax', pretrained=False).eval()
    before = snapshot(model)
    x = images(2, 128, 64)
    maps, info = V.grad_cam(model, x, return_info=True)
    assert info['layer'] == layer and info['score'] == 'logits'
    assert maps.shape == (2,) + size
    assert float(maps.min()) >= 0 and float(maps.max()) <= 1
    assert torch.allclose(maps.flatten(1).max(1).values, torch.ones(2))
    assert not model.training and not any(m.training for m in model.modules())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert_no_hooks(model)


def test_grad_cam_on_a_registered_triplet_model():
    """A plugin model built through the registry; training output (logits, features)."""
    from plugins.nn.models import register_model, unregister_model
    from tests.helpers import TinyReIDNet

    register_model('tiny_vis_net', lambda num_classes, loss='softmax', pretrained=True, use_gpu=True:
                   TinyReIDNet(num_classes, loss))
    try:
        torch.manual_seed(0)
        model = torchreid.models.build_model('tiny_vis_net', num_classes=3, loss='triplet').eval()
        x = images(2)
        maps, info = V.grad_cam(model, x, class_idx=[2, 1], return_info=True)
        assert info['layer'] == 'backbone.0' and info['score'] == 'logits'
        W = model.classifier.weight.detach()
        with torch.no_grad():
            act = model.backbone[:3](x)  # conv -> BN (eval) -> ReLU; the map is taken at the conv
            conv = model.backbone[0](x)
        # d score / d conv = W[c] * BN scale * 1[act > 0] / (h*w), so the hand map needs the mask
        bn = model.backbone[1]
        scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach()
        grads = (W[[2, 1]] * scale)[:, :, None, None] * (act > 0) / (12 * 8)
        cam = torch.relu((grads.mean(dim=(2, 3), keepdim=True) * conv).sum(1))
        lo = cam.flatten(1).min(1).values[:, None, None]
        hi = cam.flatten(1).max(1).values[:, None, None]
        assert torch.allclose(maps, (cam - lo) / (hi - lo), atol=1e-5)
        assert V.attention_maps('tiny_vis_net', model, x)['grad_cam'].shape == (2, 12, 8)
    finally:
        unregister_model('tiny_vis_net')


def test_dotted_target_layer_and_unknown_name():
    torch.manual_seed(0)
    model = torchreid.models.build_model('resnet18', num_classes=5, pretrained=False).eval()
    x = images(2, 128, 64)
    maps, info = V.grad_cam(model, x, target_layer='layer3.1.conv2', return_info=True)
    assert info['layer'] == 'layer3.1.conv2' and maps.shape == (2, 8, 4)
    by_module = V.grad_cam(model, x, target_layer=model.layer3[1].conv2)
    assert torch.allclose(by_module, maps, atol=1e-6)
    with pytest.raises(ValueError, match=r"Unknown target layer 'layer3\.9\.conv2'.*layer4"):
        V.grad_cam(model, x, target_layer='layer3.9.conv2')
    with pytest.raises(ValueError, match="target layer 'classifier' did not output a 4-D tensor"):
        V.grad_cam(model, x, target_layer='classifier')
    assert_no_hooks(model)


def test_bad_class_index_is_an_error():
    net, x = make_camnet(), images()
    with pytest.raises(ValueError, match='out of range for 4 classes'):
        V.grad_cam(net, x, class_idx=[0, 1, 4])
    with pytest.raises(ValueError, match='2 entries for 3 images'):
        V.grad_cam(net, x, class_idx=[0, 1])
    assert_no_hooks(net)


# ---------------------------------------------------------------------------------------------
# Attention-map registry
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def registered_maps():
    calls = []

    def maps_fn(model, imgs):
        calls.append(model.training)
        model.train()  # a careless project function: the mode must still be restored
        n = imgs.size(0)
        return {'stage1': torch.arange(n * 6, dtype=torch.float32).view(n, 3, 2) * 5.0,
                'stage2': torch.ones(n, 1, 4, 2)}

    plugins.register_attention_maps('camnet_test', maps_fn)
    yield calls
    plugins.ATTENTION_MAPS.unregister('camnet_test')


def test_registered_attention_maps_replace_grad_cam(registered_maps):
    net, x = make_camnet().eval(), images(2)
    maps = V.attention_maps('camnet_test', net, x)
    assert registered_maps == [False] and list(maps) == ['stage1', 'stage2']
    assert maps['stage1'].shape == (2, 3, 2) and maps['stage2'].shape == (2, 4, 2)
    assert float(maps['stage1'].min()) == 0 and float(maps['stage1'].max()) == 1  # normalised
    assert not net.training  # restored
    with_layer = V.attention_maps('camnet_test', net, x, target_layer='features.0')
    assert list(with_layer) == ['stage1', 'stage2', 'grad_cam:features.0']
    # an unregistered model gets Grad-CAM
    plain = V.attention_maps('some_other_net', net, x)
    assert list(plain) == ['grad_cam'] and torch.allclose(plain['grad_cam'], V.grad_cam(net, x))


def test_duplicate_attention_registration_errors(registered_maps):
    with pytest.raises(KeyError, match="Duplicate attention map name 'camnet_test'"):
        plugins.register_attention_maps('camnet_test', lambda m, x: {})


def test_bad_registered_maps_are_reported():
    plugins.register_attention_maps('bad_maps_test', lambda m, x: {'a': torch.zeros(5, 2)})
    try:
        with pytest.raises(ValueError, match="attention map 'a' of 'bad_maps_test' has shape"):
            V.attention_maps('bad_maps_test', make_camnet(), images(2))
    finally:
        plugins.ATTENTION_MAPS.unregister('bad_maps_test')


# ---------------------------------------------------------------------------------------------
# PNG output
# ---------------------------------------------------------------------------------------------
def test_overlay_and_save_grid_write_png(tmp_path):
    image = np.full((40, 20, 3), 128, dtype=np.uint8)
    heat = torch.zeros(4, 2)
    heat[0, 0] = 1.0
    out = V.overlay(image, heat, alpha=0.5)
    assert out.shape == (40, 20, 3) and out.dtype == np.uint8
    # hot corner is red-ish, cold far corner blue-ish (jet), both blended with grey 128
    r, g, b = out[0, 0].astype(int)
    assert r >= b + 50 and r >= g + 50
    r, g, b = out[-1, -1].astype(int)
    assert b >= r + 50 and b >= g + 50
    assert out[0, 0, 0] != out[-1, -1, 0] and not np.array_equal(out[5, 5], out[0, 0])
    assert np.array_equal(V.overlay(image, heat, alpha=0.0), image)

    rows = [[('input', image), ('map', out)], [image, out]]
    path = V.save_grid(rows, str(tmp_path / 'sub' / 'grid.png'))
    with Image.open(path) as img:
        assert img.format == 'PNG'
        width, height = img.size
    pad, title = V.GRID_PAD, V.GRID_TITLE
    assert width == 2 * 20 + 3 * pad and height == 2 * (40 + title) + 3 * pad


def _solid(path, value, size=(16, 8)):
    Image.fromarray(np.full(size + (3,), value, dtype=np.uint8)).save(path)
    return str(path)


def _border_colours(path):
    """Pure border colours met along the middle row of a ranked-list PNG, left to right."""
    with Image.open(path) as img:
        assert img.format == 'PNG'
        row = np.asarray(img.convert('RGB'))[img.height // 2 + V.RANK_LABEL // 2]
    named = {tuple(V.GREEN): 'green', tuple(V.RED): 'red', tuple(V.QUERY_BORDER): 'black'}
    runs, previous = [], None  # runs of adjacent pixels of one border colour
    for px in map(tuple, row):
        name = named.get(px)
        if name and name != previous:
            runs.append(name)
        previous = name
    # every cell has a left and a right border: collapse the pairs
    colours = runs
    assert len(colours) % 2 == 0 and colours[::2] == colours[1::2], colours
    return colours[::2]


def test_ranked_results_png_layout_and_colours(tmp_path):
    q = [(_solid(tmp_path / 'q{}.jpg'.format(i), 128), pid, 0) for i, pid in enumerate([1, 2, 3])]
    gpids = [1, 1, 2, 3, 0, 2, 1]
    gcams = [0, 1, 1, 1, 1, 1, 2]  # gallery 0: same pid + camera as query 0 -> skipped
    g = [(_solid(tmp_path / 'g{}.png'.format(i), 100 + i), pid, cam)
         for i, (pid, cam) in enumerate(zip(gpids, gcams))]
    distmat = np.array([[0, 3, 1, 5, 2, 6, 4],    # q pid 1: g2(red) g4(red) g1(green) g6(green)
                        [5, 4, 0, 3, 2, 1, 6],    # q pid 2: g2 g5 (green green) g4 g3 (red red)
                        [1, 2, 3, 0, 4, 5, 6]], dtype=np.float32)
    out = tmp_path / 'ranked'
    written = V.save_ranked_results(distmat, q, g, str(out), topk=4)
    assert sorted(os.listdir(out)) == ['0000_q0.png', '0001_q1.png', '0002_q2.png']
    assert written == [str(out / f) for f in ['0000_q0.png', '0001_q1.png', '0002_q2.png']]
    assert _border_colours(written[0]) == ['black', 'red', 'red', 'green', 'green']
    assert _border_colours(written[1]) == ['black', 'green', 'green', 'red', 'red']
    assert _border_colours(written[2]) == ['black', 'green', 'red', 'red', 'red']
    with Image.open(written[0]) as img:
        cell = 128 + 2 * V.RANK_BORDER
        assert img.size == (5 * cell + 3 * V.RANK_SPACING + V.RANK_QUERY_SPACING,
                            V.RANK_LABEL + 256 + 2 * V.RANK_BORDER)
        # top-left pixel of the rank-1 cell's border, computed from the layout constants
        x = cell + V.RANK_QUERY_SPACING
        assert img.convert('RGB').getpixel((x, V.RANK_LABEL)) == V.RED

    # max_queries picks evenly spaced queries; torch distances are accepted
    few = V.save_ranked_results(torch.from_numpy(distmat), q, g, str(tmp_path / 'few'), topk=2,
                                max_queries=2)
    assert [os.path.basename(p) for p in few] == ['0000_q0.png', '0002_q2.png']
    with pytest.raises(ValueError, match='3 queries and 7 gallery'):
        V.save_ranked_results(distmat[:, :5], q, g, str(tmp_path / 'bad'))


def test_unreadable_image_names_the_file(tmp_path):
    bad = tmp_path / 'broken.jpg'
    bad.write_bytes(b'not an image')
    with pytest.raises(ValueError, match='broken.jpg'):
        V.read_rgb(str(bad))


# ---------------------------------------------------------------------------------------------
# tools/visualize.py end to end
# ---------------------------------------------------------------------------------------------
FAST = ['data.height', '64', 'data.width', '32', 'data.workers', '0', 'test.batch_size', '16',
        'model.name', 'resnet18']


def visualize(*args, cwd):
    return run_tool('visualize', *args, cwd=cwd, timeout=300)


def pngs(folder):
    files = sorted(os.listdir(folder))
    for f in files:
        with Image.open(os.path.join(folder, f)) as img:
            assert img.format == 'PNG' and f.endswith('.png')
    return files


def test_cli_ranked_and_attention_end_to_end(tmp_path):
    config = os.path.join(REPO, 'configs/baselines/resnet50_synthreid.yaml')
    root = str(tmp_path / 'data')
    opts = [*TINY_SYNTHREID, *FAST, 'data.save_dir', str(tmp_path / 'log')]
    run_cli(tmp_path, config, root, opts)


def run_cli(tmp_path, config, root, opts):
    cfg = setup_config(config, opts, root=root)
    datamanager = build_datamanager(cfg)  # generates the tiny dataset once
    torch.manual_seed(0)
    model = build_model('resnet18', datamanager.num_train_pids, pretrained=False)
    weights = str(tmp_path / 'model.pth.tar-1')
    torch.save({'state_dict': model.state_dict(), 'epoch': 1}, weights)
    common = ['--config-file', config, '--weights', weights, '--root', root]

    code, out = visualize('ranked', *common, '--topk', '5', '--num-queries', '4',
                          '--output', str(tmp_path / 'ranked'), *opts, cwd=tmp_path)
    assert code == 0, out
    assert 'Rank-1' in out and 'Wrote 4 ranked lists' in out
    files = pngs(tmp_path / 'ranked')
    assert len(files) == 4
    # the ranked lists honour the evaluation's options, as the engine's test does
    code, out = visualize('ranked', *common, '--topk', '5', '--num-queries', '2', '--output',
                          str(tmp_path / 'ranked_flip'), *opts, 'test.flip', 'True', 'test.rerank',
                          'True', cwd=tmp_path)
    assert code == 0, out
    assert 'flip True' in out and 'rerank True' in out and 'Wrote 2 ranked lists' in out

    code, out = visualize('attention', *common, '--num-images', '3', *opts, cwd=tmp_path)
    assert code == 0, out
    assert 'resnet18: Grad-CAM at layer4 (argmax class) for 3 images' in out
    assert pngs(tmp_path / 'log' / 'actmap_synthreid') == ['attention_resnet18.png']

    image = tmp_path / 'person.png'
    Image.fromarray(np.random.RandomState(0).randint(0, 255, (48, 20, 3), dtype=np.uint8)).save(image)
    code, out = visualize('attention', *common, '--images', str(image), str(image), '--layer', 'layer3',
                          '--output', str(tmp_path / 'att'), '--', *opts, cwd=tmp_path)
    assert code == 0, out
    assert 'Grad-CAM at layer3' in out
    with Image.open(tmp_path / 'att' / 'attention_resnet18.png') as img:
        # both images (original + overlay each) side by side in one row, shown 256 pixels high
        assert img.format == 'PNG' and img.height == 256 + V.GRID_TITLE + 2 * V.GRID_PAD
        assert img.width == 4 * round(20 * 256 / 48) + 5 * V.GRID_PAD

    # user errors: a message and exit status, no traceback (one as a subprocess, the rest in-process)
    code, out = visualize('attention', *common, '--images', str(image), '--layer', 'layer9', '--',
                          *opts, cwd=tmp_path)
    assert code != 0 and "Error: Unknown target layer 'layer9'" in out and 'layer4' in out
    assert 'Traceback' not in out
    cli = load_tool('visualize')
    for command, args, message in [
        ('attention', ['--images', str(tmp_path / 'missing.jpg'), '--', *opts], 'missing.jpg'),
        ('attention', ['--images', weights, '--', *opts], 'Cannot read image file "{}"'.format(weights)),
        ('attention', ['--images', str(image), *opts], 'must follow "--"'),
        ('ranked', ['test.dist_metric', 'manhattan', *opts],
         "test.dist_metric 'manhattan' is not accepted: use 'euclidean' or 'cosine'"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            cli.main([command, *common, *args])
        assert message in str(exit_info.value.code)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(['ranked', '--config-file', config, '--weights', str(tmp_path / 'nope.pth'), *opts])
    assert 'Weights file not found' in exit_info.value.code and 'nope.pth' in exit_info.value.code


