"""ONNX export (plugins/export.py, tools/export_onnx.py).

Parity, dynamic batch, training-only weights, metadata, fp16 and the CLI.
"""
import copy
import os
import re
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from torchreid.reid.utils import FeatureExtractor

import plugins
from plugins.evaluation import protocol as evaluation
from plugins.training.checkpoint import save_checkpoint
from plugins.export import (FP16_RTOL, FP32_RTOL, ExportError, ExportParityError,
                            OnnxFeatureExtractor, check_parity, export_onnx, read_metadata,
                            training_only_initializers, training_only_parameters)
from plugins.training.launch import build_datamanager, setup_config
from tests.helpers import TINY_SYNTHREID, load_tool, run_tool

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(REPO, 'configs', 'baselines', 'resnet50_synthreid.yaml')
H, W = 64, 32
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
BUILTINS = ['resnet18', 'osnet_x0_25']
# Every model a project registers is exported too: this list grows with the projects.
PLUGIN_MODELS = plugins.MODELS.names()


def build(name, num_classes=4):
    return plugins.build_model(name, num_classes, pretrained=False, use_gpu=False,
                               height=H, width=W).eval()


def batch(n, seed=0, height=H, width=W):
    return torch.randn(n, 3, height, width, generator=torch.Generator().manual_seed(seed))


def graph_arrays(path):
    model = onnx.load(path)
    return [onnx.numpy_helper.to_array(t) for t in model.graph.initializer]


def holds(arrays, tensor):
    """Whether some graph array equals ``tensor`` (cast to that array's dtype)."""
    values = tensor.detach().float().numpy()
    return any(a.shape == values.shape and np.array_equal(a, values.astype(a.dtype)) for a in arrays)


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    """``exported(name) -> (model, path)``: each model built and exported once per module."""
    cache = {}
    folder = tmp_path_factory.mktemp('onnx')

    def get(name):
        if name not in cache:
            model = build(name)
            path = export_onnx(model, str(folder / (name + '.onnx')), H, W, MEAN, STD, model_name=name)
            cache[name] = model, path
        return cache[name]

    return get


@pytest.mark.parametrize('name', BUILTINS + PLUGIN_MODELS)
def test_export_and_parity_fp32(name, exported):
    model, path = exported(name)
    onnx_model = onnx.load(path)
    onnx.checker.check_model(onnx_model)
    assert [i.name for i in onnx_model.graph.input] == ['images']
    assert [o.name for o in onnx_model.graph.output] == ['features']
    assert onnx_model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == 'batch'
    report = check_parity(model, path, [batch(3, seed=1)], rtol=FP32_RTOL)
    assert report['max_rel_diff'] <= FP32_RTOL and report['num_images'] == 3
    assert report['feature_dim'] == read_metadata(path)['feature_dim']
    assert training_only_initializers(model, path) == []


def test_parity_check_fails_when_the_graph_differs(exported):
    model, path = exported('resnet18')
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.conv1.weight.mul_(1.01)
    with pytest.raises(ExportParityError, match='parity failed.*max rel diff.*> tolerance 0.0001'):
        check_parity(changed, path, batch(2), rtol=FP32_RTOL)


def test_dynamic_batch_axis(exported):
    model, path = exported('osnet_x0_25')
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    images = batch(5, seed=3)
    together = session.run(None, {'images': images.numpy()})[0]
    one_by_one = np.concatenate([session.run(None, {'images': images[i:i + 1].numpy()})[0]
                                 for i in range(5)])
    with torch.no_grad():
        reference = model(images).numpy()
    assert together.shape == one_by_one.shape == reference.shape == (5, 512)
    scale = np.abs(reference).max()
    assert np.abs(together - one_by_one).max() <= FP32_RTOL * scale
    assert np.abs(together - reference).max() <= FP32_RTOL * scale


class BranchNet(nn.Module):
    """Eval: backbone -> embed (a branch used at test time). Train: also classifier and critic."""

    def __init__(self, leak=False):
        super().__init__()
        self.leak = leak
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.embed = nn.Linear(8, 6)
        self.classifier = nn.Linear(6, 4)
        self.critic = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 1))

    def forward(self, x):
        v = self.embed(self.backbone(x))
        if self.training:
            return self.classifier(v), self.critic(v)
        if self.leak:  # deliberately wrong: the eval graph reads the classifier's weights
            return v + F.linear(v, self.classifier.weight, self.classifier.bias)[:, :1]
        return v


def test_no_training_only_initializers_in_builtin_graph(exported):
    model, path = exported('resnet18')
    unused = training_only_parameters(model, batch(2))
    assert {'classifier.weight', 'classifier.bias'} <= set(unused)
    assert not any(name.startswith(('conv1', 'layer')) for name in unused)
    assert not holds(graph_arrays(path), model.classifier.weight)
    assert training_only_initializers(model, path) == []


def test_training_only_check_sees_eval_branches_and_leaks(tmp_path):
    torch.manual_seed(0)
    net = BranchNet().eval()
    assert set(training_only_parameters(net, batch(2, height=16, width=8))) == {
        'classifier.weight', 'classifier.bias', 'critic.0.weight', 'critic.0.bias',
        'critic.2.weight', 'critic.2.bias'}
    path = export_onnx(net, str(tmp_path / 'branch.onnx'), 16, 8, MEAN, STD)
    assert holds(graph_arrays(path), net.embed.weight)  # the eval branch is in the graph
    assert training_only_initializers(net, path) == []

    # A graph traced in training mode holds the classifier and the critic: detected.
    train_path = str(tmp_path / 'branch_train.onnx')
    net.train()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # the exporter advises against what this test does on purpose
        torch.onnx.export(net, (batch(2, height=16, width=8),), train_path, dynamo=False,
                          training=torch.onnx.TrainingMode.TRAINING)
    leaked = {param for _, param in training_only_initializers(net.eval(), train_path)}
    assert {'classifier.weight', 'classifier.bias', 'critic.0.weight', 'critic.2.weight'} <= leaked


@pytest.mark.parametrize('fp16', [False, True], ids=['fp32', 'fp16'])
def test_export_refuses_a_graph_that_uses_training_only_weights(tmp_path, fp16):
    torch.manual_seed(0)
    out = tmp_path / 'leak.onnx'
    with pytest.raises(ExportError, match=r'training-only parameter.*classifier\.weight'):
        export_onnx(BranchNet(leak=True), str(out), 16, 8, MEAN, STD, fp16=fp16)
    assert os.listdir(tmp_path) == []  # nothing written, no temporary left behind


def test_export_rejects_non_modules_and_bad_outputs(tmp_path):
    with pytest.raises(TypeError, match='torch.nn.Module'):
        export_onnx(lambda x: x, str(tmp_path / 'f.onnx'), H, W, MEAN, STD)

    class TupleNet(BranchNet):
        def forward(self, x):
            v = super().forward(x)
            return v, v

    with pytest.raises(ExportError, match=r'one \(N, D\) feature tensor'):
        export_onnx(TupleNet(), str(tmp_path / 't.onnx'), 16, 8, MEAN, STD)


def test_metadata_and_feature_extractor_match_torchreid(tmp_path):
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]  # not the defaults: they must come from the file
    model = build('resnet18', num_classes=1)
    ckpt = save_checkpoint({'state_dict': model.state_dict(), 'epoch': 1}, str(tmp_path / 'ckpt'))
    path = export_onnx(model, str(tmp_path / 'r18.onnx'), H, W, mean, std, model_name='resnet18')

    meta = read_metadata(path)
    assert (meta['height'], meta['width'], meta['norm_mean'], meta['norm_std']) == (H, W, mean, std)
    assert meta['model_name'] == 'resnet18' and meta['colour_order'] == 'RGB'
    assert meta['feature_dim'] == 512 and meta['precision'] == 'fp32'
    assert meta['torch_version'] == torch.__version__ and meta['torchreid_version'] == '0.2.5'
    assert '0-1' in meta['pixel_scaling']

    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, size=s, dtype=np.uint8)
              for s in [(80, 40, 3), (128, 64, 3), (50, 30, 3)]]
    files = []
    for i, a in enumerate(arrays):
        files.append(str(tmp_path / 'img{}.png'.format(i)))
        Image.fromarray(a).save(files[-1])

    ours = OnnxFeatureExtractor(path)
    theirs = FeatureExtractor(model_name='resnet18', model_path=ckpt, image_size=(H, W),
                              pixel_mean=mean, pixel_std=std, device='cpu', verbose=False)
    assert ours.image_size == (H, W)

    def close(a, b):
        assert isinstance(a, torch.Tensor) and a.shape == b.shape
        assert (a - b).abs().max() <= FP32_RTOL * b.abs().max()

    expected = theirs(files)
    close(ours(files), expected)
    close(OnnxFeatureExtractor(path, batch_size=2)(files), expected)
    close(ours(arrays), theirs(arrays))
    close(ours(files[1]), theirs(files[1]))
    close(ours(arrays[2]), theirs(arrays[2]))
    # test.flip: the mean of two explicit passes, the second on the mirrored images
    images = batch(3, seed=7)
    mirrored = (theirs(images) + theirs(images.flip(-1))) / 2
    close(OnnxFeatureExtractor(path, flip=True)(images), mirrored)
    flipping = evaluation.FeatureExtractor(model_name='resnet18', model_path=ckpt, image_size=(H, W),
                                           pixel_mean=mean, pixel_std=std, device='cpu',
                                           verbose=False, flip=True)
    assert torch.allclose(flipping(images), mirrored, atol=1e-6)
    images = batch(4, seed=5)
    close(ours(images), theirs(images))
    close(ours(images[0]), theirs(images[0]))


def test_fp16_export_within_tolerance(exported, tmp_path):
    model, fp32_path = exported('resnet18')
    path = export_onnx(model, str(tmp_path / 'r18_fp16.onnx'), H, W, MEAN, STD, fp16=True)
    onnx_model = onnx.load(path)
    float_inits = [t for t in onnx_model.graph.initializer
                   if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)]
    assert float_inits and all(t.data_type == onnx.TensorProto.FLOAT16 for t in float_inits)
    for value in (onnx_model.graph.input[0], onnx_model.graph.output[0]):  # I/O stays float32
        assert value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert read_metadata(path)['precision'] == 'fp16'
    assert os.path.getsize(path) < 0.6 * os.path.getsize(fp32_path)
    report = check_parity(model, path, [batch(4, seed=6)], rtol=FP16_RTOL)
    assert report['max_rel_diff'] <= FP16_RTOL
    assert training_only_initializers(model, path) == []


def run_cli(*args, cwd):
    return run_tool('export_onnx', *args, cwd=cwd)


def test_cli_exports_checks_parity_and_reports_bad_weights(tmp_path, capsys):
    root, save = str(tmp_path / 'data'), str(tmp_path / 'log')
    opts = [*TINY_SYNTHREID, 'data.height', str(H), 'data.width', str(W), 'data.workers', '0',
            'test.batch_size', '8', 'model.name', 'resnet18', 'data.save_dir', save]
    cfg = setup_config(CONFIG, opts, root=root)
    datamanager = build_datamanager(cfg)  # generates the tiny dataset; gives the class count
    model = plugins.build_model(cfg.model.name, datamanager.num_train_pids, loss=cfg.loss.name,
                                pretrained=False, use_gpu=False).eval()
    ckpt = save_checkpoint({'state_dict': model.state_dict(), 'epoch': 0}, str(tmp_path / 'ckpt'))

    code, out = run_cli('--config-file', CONFIG, '--weights', ckpt, '--root', root, *opts,
                        cwd=tmp_path)
    assert code == 0, out
    output = os.path.join(save, 'resnet18.onnx')
    assert 'Parity OK' in out and output in out and 'feature dim                  512' in out
    rows = re.findall(r'(random batch|synthreid query images)\s+(\d+) images\s+max abs diff (\S+)'
                      r'\s+max rel diff (\S+)', out)
    assert [r[0] for r in rows] == ['random batch', 'synthreid query images'], out
    assert int(rows[1][1]) == 8  # one query batch of test.batch_size real images
    assert all(float(r[3]) <= FP32_RTOL for r in rows)
    images = batch(3, seed=7)
    with torch.no_grad():
        reference = model(images)
    got = OnnxFeatureExtractor(output)(images)
    assert (got - reference).abs().max() <= FP32_RTOL * reference.abs().max()

    missing = str(tmp_path / 'no_such_weights.pth.tar')
    code, out = run_cli('--config-file', CONFIG, '--weights', missing, '--root', root, *opts,
                        cwd=tmp_path)
    assert code != 0 and missing in out and 'Traceback' not in out

    # The other failures in-process (each subprocess start costs seconds).
    cli = load_tool('export_onnx')

    def fails(*args):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(['--config-file', CONFIG, '--root', root, *args, *opts])
        return str(exit_info.value.code)

    wrong = save_checkpoint({'state_dict': build('osnet_x0_25').state_dict(), 'epoch': 9},
                            str(tmp_path / 'wrong'))
    message = fails('--weights', wrong)  # weights of another architecture
    assert wrong in message and 'do not fit the model' in message and len(message) < 1000
    message = fails('--weights', ckpt, '--rtol', '0', '--output', str(tmp_path / 'strict.onnx'))
    assert message.startswith('Parity check failed') and '> tolerance 0' in message
    assert 'ABOVE TOLERANCE' in capsys.readouterr().out
