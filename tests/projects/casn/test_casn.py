"""CASN: differentiable Grad-CAM, the four losses, the engine on generated data, export."""
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import plugins
from plugins.export import check_parity, export_onnx, training_only_parameters
from plugins.training.launch import setup_config
from plugins.data.samplers import pair_labels
from projects.casn.attention import (aligned_attention, differentiable_cam,
                                     identification_attention_loss, siamese_attention_loss,
                                     soft_mask)
from projects.casn.benchmark import pair_batch
from projects.casn.engine import build_casn_engine
from projects.casn.model import CASNNet
from plugins import NoData
from tests.helpers import (REPO, amp_step, changed, run_benchmark_section, snapshot,
                           tiny_synthreid_run)

CONFIG_DIR = os.path.join(REPO, 'configs', 'casn')


def test_grad_cam_equals_a_hand_computation_on_a_small_network():
    torch.manual_seed(0)
    maps = torch.randn(2, 3, 4, 5, requires_grad=True)
    fc = nn.Linear(3, 4)
    scores = fc(maps.mean((2, 3))).gather(1, torch.tensor([[1], [3]])).squeeze(1)
    cam = differentiable_cam(maps, scores)
    for i, c in enumerate([1, 3]):
        # d score / d A_k(x, y) = W[c, k] / (h w): Grad-CAM weights are W[c, k] / (h w)
        raw = F.relu(torch.einsum('k,khw->hw', fc.weight[c] / 20, maps[i]))
        expected = (raw - raw.min()) / (raw.max() - raw.min())
        assert torch.allclose(cam[i], expected, atol=1e-6)


def test_soft_mask_lies_in_0_1_and_passes_gradcheck():
    cam = torch.rand(1, 3, 3, dtype=torch.float64, requires_grad=True)
    mask = soft_mask(cam, 10.0, 0.5)
    assert mask.min() > 0 and mask.max() < 1
    torch.manual_seed(0)
    # positive maps and weights: every cell has a positive Grad-CAM value, so the normalised
    # map is spread over (0, 1) rather than one-hot, and the mask has a gradient to check
    maps = (torch.rand(1, 2, 3, 3, dtype=torch.float64) + 0.5).requires_grad_(True)
    weight = torch.tensor([1.0, 0.5], dtype=torch.float64)

    def masked_from_maps(a):  # Grad-CAM (second order) -> normalisation -> soft mask
        scores = (a.mean((2, 3)) * weight).sum(1) + (a ** 2).mean((1, 2, 3))
        return soft_mask(differentiable_cam(a, scores), 10.0, 0.5)

    mask = masked_from_maps(maps)
    assert ((mask > 0.01) & (mask < 0.99)).sum() >= 3  # not a one-hot map
    jacobian = torch.autograd.functional.jacobian(masked_from_maps, maps)
    assert jacobian.abs().sum() > 1e-3
    assert torch.autograd.gradcheck(masked_from_maps, (maps,))


@pytest.mark.parametrize('backbone', ['ide', 'pcb'])
def test_identification_attention_loss_reaches_the_backbone(backbone):
    torch.manual_seed(0)
    model = CASNNet(4, backbone=backbone).train()
    images, pids = torch.randn(4, 3, 64, 32), torch.tensor([0, 1, 2, 3])
    outputs = model(images, return_outputs=True)
    stats = model.trunk.stem[1].running_mean.clone()
    loss, mask = identification_attention_loss(model, images, outputs.maps, pids)
    assert torch.equal(model.trunk.stem[1].running_mean, stats)  # masked pass: no BN stat update
    assert mask.shape == (4, 1, 64, 32) and mask.min() > 0 and mask.max() < 1
    assert 0 < loss.item() < 1
    loss.backward()
    for name in ('trunk.stem.0.weight', 'trunk.stages.3.2.conv3.weight'):
        assert dict(model.named_parameters())[name].grad.abs().sum() > 0, name
    head = model.classifier.weight if backbone == 'ide' else model.part_classifiers[0].weight
    assert head.grad.abs().sum() > 0


def test_pcb_class_scores_have_no_cross_image_gradient():
    torch.manual_seed(0)
    model = CASNNet(4, backbone='pcb').train()
    maps = torch.rand(3, 2048, 6, 2, requires_grad=True)
    grad, = torch.autograd.grad(model.class_scores(maps)[0, 1], maps)
    assert grad[0].abs().sum() > 0 and grad[1:].abs().sum() == 0
    logits = model.identity_logits(model.features(maps))  # the training forward's values
    assert torch.allclose(model.class_scores(maps), torch.stack(logits).sum(0), atol=1e-5)


def test_siamese_attention_loss_is_zero_for_identical_maps_and_positive_otherwise():
    torch.manual_seed(0)
    model = CASNNet(4, backbone='ide').train()
    image, other = torch.randn(1, 3, 128, 64), torch.randn(1, 3, 128, 64)
    maps = model.trunk(torch.cat([image, image, image, other]))  # pairs (0, 1) and (2, 3)
    loss_same = siamese_attention_loss(model, maps, torch.tensor([True, False]))
    loss_other = siamese_attention_loss(model, maps, torch.tensor([False, True]))
    loss_both = siamese_attention_loss(model, maps, torch.tensor([True, True]))
    none = siamese_attention_loss(model, maps, torch.tensor([False, False]))
    assert loss_same.item() == pytest.approx(0.0, abs=1e-6) and loss_other.item() > 1e-3
    assert loss_both.item() == pytest.approx(loss_other.item() / 2, rel=1e-5)  # mean over positives
    loss_other.backward(retain_graph=True)
    assert model.siamese.weight.grad.abs().sum() > 0
    assert none.item() == 0
    model.zero_grad()
    none.backward()  # no positive pair: a zero loss whose graph still reaches the Siamese head
    assert model.siamese.weight.grad is not None and model.siamese.weight.grad.abs().sum() == 0


def test_alignment_crops_to_the_region_above_the_threshold():
    cams = torch.zeros(2, 6, 4)
    cams[0, 1:3, 1:3] = 0.9  # a 2x2 blob ...
    cams[1, 3:5, 0:2] = 0.9  # ... the same blob elsewhere
    aligned = aligned_attention(cams, 0.5, (6, 4))
    assert torch.allclose(aligned[0], aligned[1]) and torch.allclose(aligned[0], torch.full((6, 4), 0.9))


def make_engine(backbone='ide', classes=4, amp=''):
    torch.manual_seed(0)
    cfg = plugins.get_default_config()
    cfg.use_gpu = False
    cfg.train.amp = amp
    cfg.sampler.train_sampler = 'PairwiseSampler'
    model = plugins.build_model('casn_{}_resnet50'.format(backbone), classes, pretrained=False)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    return build_casn_engine(cfg, NoData(classes), model, optimizer, None)


@pytest.mark.parametrize('backbone', ['ide', 'pcb'])
def test_each_loss_term_falls_on_a_fixed_pair_batch(backbone):
    engine = make_engine(backbone)
    batch = pair_batch(4, 64, 32, 4)
    engine.set_model_mode('train')
    # 20 steps: at 12, PCB's L_ia was still at 0.85x its start with one thread (0.38x-0.53x
    # elsewhere); at 20 every term is at most 0.37x, with 1 or 2 threads
    logs = [engine.forward_backward(batch) for _ in range(20)]
    assert {'loss_id', 'loss_ia', 'loss_ver', 'loss_sa', 'acc', 'positive_pairs'} <= set(logs[0])
    assert logs[0]['positive_pairs'] == 2
    for term in ('loss_id', 'loss_ia', 'loss_ver'):
        assert sum(log[term] for log in logs[-2:]) < 0.8 * sum(log[term] for log in logs[:2]), term


def test_siamese_attention_term_falls_when_it_is_trained():
    """Trained alone, L_sa makes the positive pairs' attention consistent (it is non-smooth: the
    thresholded crop boxes move, so only the trend is checked)."""
    engine = make_engine('ide')
    engine.loss_terms = [t._replace(weight=1.0) for t in engine.loss_terms if t.name == 'loss_sa']
    batch = pair_batch(4, 128, 64, 4)
    engine.set_model_mode('train')
    sa = [engine.forward_backward(batch)['loss_sa'] for _ in range(10)]
    assert sa[0] > 0.1 and sum(sa[-3:]) / 3 < 0.5 * sa[0]


def test_engine_needs_pairs_and_a_casn_model():
    cfg = plugins.get_default_config()
    model = CASNNet(3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="needs sampler.train_sampler 'PairwiseSampler'"):
        build_casn_engine(cfg, NoData(3), model, opt, None)
    net = plugins.build_model('resnet18', 3, pretrained=False)
    with pytest.raises(TypeError, match="engine 'casn' needs a CASN model"):
        build_casn_engine(cfg, NoData(3), net, opt, None)


def test_a_short_run_on_generated_pairs_lowers_the_loss(tmp_path):
    engine = tiny_synthreid_run(os.path.join(CONFIG_DIR, 'casn_ide_resnet50_synthreid.yaml'), tmp_path)
    batches = list(engine.train_loader)
    assert all(pair_labels(b['pid']).sum() == 2 for b in batches)  # pos_ratio 0.5 of 4 pairs
    engine.set_model_mode('train')
    before = snapshot(engine.model)
    logs = [engine.forward_backward(batches[0]) for _ in range(6)]
    total = [sum(v for k, v in log.items() if k.startswith('loss_')) for log in logs]
    assert sum(total[-2:]) < sum(total[:2]) and changed(before, engine.model)


def test_shipped_configs_load():
    names = os.listdir(CONFIG_DIR)
    assert len(names) >= 14
    for name in names:
        cfg = setup_config(os.path.join(CONFIG_DIR, name))
        assert cfg.engine.name == 'casn'
        if 'scratch' in name:  # the shared from-scratch recipe (configs/baselines)
            assert not cfg.model.pretrained and cfg.sampler.train_sampler == 'PairwiseSampler'
        elif name.startswith('casn_pcb') and 'synthreid' not in name:
            assert (cfg.data.height, cfg.data.width) == (384, 128)
        elif 'synthreid' not in name:
            assert (cfg.data.height, cfg.data.width) == (288, 144)
            assert (cfg.train.lr, cfg.train.max_epoch, cfg.train.batch_size) == (0.03, 40, 32)


@pytest.mark.parametrize('backbone, dim', [('ide', 2048), ('pcb', 1536)])
def test_onnx_export_without_the_training_heads(tmp_path, backbone, dim):
    torch.manual_seed(0)
    model = plugins.build_model('casn_{}_resnet50'.format(backbone), 5, pretrained=False)
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, 96, 32))
    model.eval()
    example = torch.randn(2, 3, 96, 32)
    training_only = set(training_only_parameters(model, example))
    assert {'siamese.weight', 'verifier.weight'} <= training_only
    assert not any(n.startswith(('trunk.', 'reduce.')) for n in training_only)
    path = export_onnx(model, str(tmp_path / 'casn.onnx'), 96, 32, [0.5] * 3, [0.5] * 3,
                       model_name='casn_{}_resnet50'.format(backbone))
    report = check_parity(model, path, [torch.randn(n, 3, 96, 32) for n in (1, 3)])
    assert report['feature_dim'] == dim and report['max_rel_diff'] <= 1e-4


def test_attention_maps_for_visualisation():
    from plugins.visualization import attention_maps
    model = CASNNet(4, backbone='pcb').eval()
    maps = attention_maps('casn_pcb_resnet50', model, torch.randn(2, 3, 96, 32))
    assert set(maps) == {'identification', 'siamese'}
    for m in maps.values():
        assert m.shape == (2, 6, 2) and m.min() >= 0 and m.max() <= 1


def test_benchmark_section_reports_the_ratio_to_identification_only(tmp_path):
    section, markdown = run_benchmark_section('casn', tmp_path)
    (run,) = section['runs'].values()
    assert run['id_only_s'] > 0 and run['ratio'] == pytest.approx(run['casn_s'] / run['id_only_s'])
    assert 'id only' in markdown


@pytest.mark.parametrize('height', [4, 6, 7, 9, 24])
def test_stripe_pool_equals_adaptive_pooling(height):
    from projects.casn.model import stripe_pool
    x = torch.randn(2, 3, height, 5)
    assert torch.allclose(stripe_pool(x, 6), nn.AdaptiveAvgPool2d((6, 1))(x), atol=1e-6)


def test_all_four_terms_train_under_bf16_autocast():
    engine = make_engine(amp='bf16')
    log = amp_step(engine, pair_batch(4, 64, 32, 4))
    assert {'loss_id', 'loss_ia', 'loss_ver', 'loss_sa'} <= set(log)


def test_verification_head_is_finite_under_fp16_autocast_where_fp16_squares_overflow():
    """A feature difference of 300 squares to 90000, past fp16's 65504: the head must run in
    fp32 (found on a GPU, where loss_ver was NaN under fp16 from the first step)."""
    model = CASNNet(num_classes=3, backbone='ide', siamese_dim=4).eval()
    with torch.no_grad():
        model.verifier.weight.copy_(torch.tensor([[1e-4, -1e-4, 2e-4, 0.0]]))
        model.verifier.bias.zero_()
    a = torch.tensor([[300.0, 300.0, 1.0, 5.0]])
    b = torch.zeros(1, 4)
    expected = torch.tensor([9.0 - 9.0 + 2e-4])  # 1e-4 * 90000 - 1e-4 * 90000 + 2e-4 * 1
    with torch.autocast('cpu', dtype=torch.float16):
        logits = model.verification_logits(a.half(), b.half())
    assert torch.allclose(logits.float(), expected, atol=1e-5)


@pytest.mark.parametrize('config, weights', [  # (w_ia, w_ver, w_sa) of the README's ablation rows
    ('casn_ide_resnet50_market1501_ablation_baseline.yaml', (0.0, 0.0, 0.0)),  # L_id only
    ('casn_ide_resnet50_market1501_ablation_ia.yaml', (1.0, 0.0, 0.0)),  # + L_ia
    ('casn_ide_resnet50_market1501_ablation_siamese.yaml', (0.0, 1.0, 0.0)),  # + L_ver
    ('casn_ide_resnet50_market1501_ablation_sa.yaml', (0.0, 1.0, 0.1)),  # + L_ver + L_sa
    ('casn_ide_resnet50_market1501.yaml', (1.0, 1.0, 0.1)),  # full CASN
])
def test_ablation_configs_weigh_the_terms_they_name(config, weights):
    cfg = setup_config(os.path.join(CONFIG_DIR, config), ['model.pretrained', 'False'])
    model = CASNNet(3)
    engine = build_casn_engine(cfg, NoData(3), model,
                               torch.optim.SGD(model.parameters(), lr=0.1), None)
    terms = {t.name: t.weight for t in engine.loss_terms}
    assert (terms['loss_ia'], terms['loss_ver'], terms['loss_sa']) == weights
    assert terms['loss_id'] == 1.0
