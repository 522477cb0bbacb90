"""CASN's equations against hand-computed cases: the Grad-CAM class, the erasing direction, the
soft mask, the identification-attention score, the verification targets, the importance score,
the Siamese-attention distance and where gradients flow.

Every expected value here is worked out in the test (plain arithmetic on literal numbers), never
taken from the code under test. The networks are real :class:`CASNNet` instances whose ResNet-50
trunk is replaced by the identity, so the conv maps are the input itself and every Grad-CAM can be
derived by hand: with GAP and a linear head, ``d score_c / d A_k(x, y) = W[c, k] / (h w)``.
"""
import math

import pytest
import torch
import torch.nn as nn

import plugins
from projects.casn import attention
from projects.casn import model as casn_model
from projects.casn.attention import (aligned_attention, casn_attention_maps,
                                     identification_attention_loss, siamese_attention_loss,
                                     soft_mask, true_class_probability)
from projects.casn.engine import CASNStep, build_casn_engine
from projects.casn.model import CASNNet
from plugins import NoData



@pytest.fixture(scope='module', autouse=True)
def single_thread():
    """Tiny tensors: one intra-op thread avoids oversubscribing a busy CPU (the finite-difference
    tests took 9 s with two threads on a loaded machine, 0.1 s with one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def sig(z):
    return 1.0 / (1.0 + math.exp(-z))


def tiny_casn(monkeypatch, channels, num_classes=2, backbone='ide', **kwargs):
    """A real CASNNet whose trunk is the identity (``out_channels`` = ``channels``)."""
    class IdentityTrunk(nn.Identity):
        out_channels = channels

        def __init__(self, *args, **kw):
            super().__init__()

    monkeypatch.setattr(casn_model, 'ResNetTrunk', IdentityTrunk)
    return CASNNet(num_classes, backbone=backbone, **kwargs).train()


def set_linear(layer, weight, bias):
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight, dtype=layer.weight.dtype))
        layer.bias.copy_(torch.tensor(bias, dtype=layer.bias.dtype))


def tiny_engine(model, *opts):
    cfg = plugins.get_default_config()
    cfg.use_gpu = False
    cfg.sampler.train_sampler = 'PairwiseSampler'
    cfg.merge_from_list(list(opts))
    engine = build_casn_engine(cfg, NoData(2), model,
                               torch.optim.SGD(model.parameters(), lr=0.1), None)
    return engine, {t.name: t for t in engine.loss_terms}


# ---------------------------------------------------------------- identification attention (L_ia)
#
# Two images, 2 channels, 2 x 2 maps; classifier W = I, bias (0, 5): class c looks at channel c only,
# so the Grad-CAM of class c is channel c, min-max normalised. Image 0 is labelled 0 but predicted 1
# (the bias), image 1 is labelled 1.
IA_IMAGES = [[[[2., 0.], [1., 0.]], [[0., 3.], [0., 1.]]],
             [[[1., 1.], [0., 0.]], [[0., 2.], [1., 4.]]]]
IA_PIDS = [0, 1]


def ia_model(monkeypatch):
    model = tiny_casn(monkeypatch, channels=2)
    set_linear(model.classifier, [[1., 0.], [0., 1.]], [0., 5.])
    return model


def ia_inputs(dtype=torch.float32):
    images = torch.tensor(IA_IMAGES, dtype=dtype)
    return images, images.clone().requires_grad_(True), torch.tensor(IA_PIDS)


def hand_ia_loss(alpha, beta):
    """L_ia of the IA case worked out cell by cell: for class c the Grad-CAM weights are
    W[c] / 4 = e_c / 4, so the raw map is channel c / 4; min-max -> M; T = sigmoid(alpha (M - beta));
    the kept image is I (1 - T); the loss is the mean over images of the label's softmax probability."""
    total = 0.0
    for image, label in zip(IA_IMAGES, IA_PIDS):
        raw = [v / 4 for row in image[label] for v in row]
        lo, hi = min(raw), max(raw)
        cam = [(v - lo) / (hi - lo) for v in raw]
        keep = [1 - sig(alpha * (m - beta)) for m in cam]
        means = [sum(v * k for v, k in zip([v for row in image[c] for v in row], keep)) / 4
                 for c in range(2)]
        logits = [means[0] + 0.0, means[1] + 5.0]
        total += math.exp(logits[label]) / (math.exp(logits[0]) + math.exp(logits[1]))
    return total / 2


def test_ia_mask_is_the_grad_cam_of_the_label_not_of_the_predicted_class(monkeypatch):
    model = ia_model(monkeypatch)
    images, maps, pids = ia_inputs()
    # image 0: logits (mean A_0, mean A_1 + 5) = (0.75, 6): predicted 1, labelled 0
    assert model.class_scores(maps)[0].argmax().item() == 1 and pids[0].item() == 0
    _, mask = identification_attention_loss(model, images, maps, pids, alpha=10.0, beta=0.5)
    # image 0, class 0: raw A_0 / 4 = [[.5, 0], [.25, 0]] -> M = [[1, 0], [.5, 0]]
    label_mask = torch.tensor([[sig(5), sig(-5)], [sig(0), sig(-5)]])
    # image 0, class 1 (the argmax): raw A_1 / 4 -> M = [[0, 1], [0, 1/3]]
    argmax_mask = torch.tensor([[sig(-5), sig(5)], [sig(-5), sig(10 * (1 / 3 - 0.5))]])
    # image 1, class 1 (label = argmax): M = [[0, .5], [.25, 1]]
    image1_mask = torch.tensor([[sig(-5), sig(0)], [sig(-2.5), sig(5)]])
    assert mask.shape == (2, 1, 2, 2)
    assert torch.allclose(mask[0, 0], label_mask, atol=1e-6)
    assert not torch.allclose(mask[0, 0], argmax_mask, atol=1e-2)
    assert torch.allclose(mask[1, 0], image1_mask, atol=1e-6)


def test_ia_loss_erases_the_attended_region_and_scores_the_true_class_probability(monkeypatch):
    model = ia_model(monkeypatch)
    images, maps, pids = ia_inputs()
    loss, _ = identification_attention_loss(model, images, maps, pids, alpha=10.0, beta=0.5)
    # the same numbers spelt out: image 0 keeps 1 - T = [[s(-5), s(5)], [.5, s(5)]] (label 0),
    # image 1 keeps [[s(5), .5], [s(2.5), s(-5)]] (label 1)
    m00, m01 = (2 * sig(-5) + 0.5) / 4, (3 * sig(5) + sig(5)) / 4
    m10, m11 = (sig(5) + 0.5) / 4, (2 * 0.5 + sig(2.5) + 4 * sig(-5)) / 4
    p0 = math.exp(m00) / (math.exp(m00) + math.exp(m01 + 5))
    p1 = math.exp(m11 + 5) / (math.exp(m10) + math.exp(m11 + 5))
    expected = (p0 + p1) / 2
    assert expected == pytest.approx(hand_ia_loss(10.0, 0.5), abs=1e-12)
    # keeping the attended region instead (I * T) gives another value: the case tells them apart
    k00, k01 = (2 * sig(5) + 0.5) / 4, (3 * sig(-5) + sig(-5)) / 4
    kept = math.exp(k00) / (math.exp(k00) + math.exp(k01 + 5))
    assert abs(kept - p0) > 1e-3
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_soft_mask_is_sigmoid_of_alpha_times_m_minus_beta():
    cam = torch.tensor([[0.0, 0.25, 0.5], [0.6, 0.9, 1.0]])
    expected = torch.tensor([[sig(-5), sig(-2.5), 0.5], [sig(1), sig(4), sig(5)]])  # alpha 10, beta .5
    assert torch.allclose(soft_mask(cam, 10.0, 0.5), expected, atol=1e-7)
    # alpha 2, beta 0.3: sigmoid(2 (M - 0.3)); swapping the roles of alpha and beta would not match
    expected = torch.tensor([[sig(-0.6), sig(-0.1), sig(0.4)], [sig(0.6), sig(1.2), sig(1.4)]])
    assert torch.allclose(soft_mask(cam, 2.0, 0.3), expected, atol=1e-7)


def test_config_defaults_are_the_readme_values():
    cfg = plugins.get_default_config()
    assert (cfg.casn.alpha, cfg.casn.beta, cfg.casn.sa_threshold) == (10.0, 0.5, 0.5)
    assert (cfg.casn.weight_ia, cfg.casn.weight_ver, cfg.casn.weight_sa) == (1.0, 1.0, 0.1)


def test_engine_ia_term_uses_the_configured_alpha_and_beta(monkeypatch):
    model = ia_model(monkeypatch)
    engine, terms = tiny_engine(model, 'casn.alpha', '2.0', 'casn.beta', '0.25')
    images, maps, pids = ia_inputs()
    batch = {'img': images, 'pid': pids}
    loss = terms['loss_ia'].fn(engine, batch, CASNStep(None, maps, None))
    assert hand_ia_loss(2.0, 0.25) != pytest.approx(hand_ia_loss(0.25, 2.0), abs=1e-4)
    assert loss.item() == pytest.approx(hand_ia_loss(2.0, 0.25), abs=1e-6)


def test_true_class_probability_on_tiny_logits():
    logits = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, math.log(2.0)]])
    pids = torch.tensor([0, 2])  # image 0's label is not its argmax
    e = math.e
    expected = torch.tensor([e / (e + e ** 2 + 1), 2 / (1 + 1 + 2)])
    assert torch.allclose(true_class_probability(logits, pids), expected, atol=1e-6)
    # PCB: the probability of each part, averaged over the parts
    part2 = torch.tensor([[0.0, 0.0, 0.0], [math.log(3.0), 0.0, 0.0]])
    expected_part2 = torch.tensor([1 / 3, 1 / (3 + 1 + 1)])
    assert torch.allclose(true_class_probability([logits, part2], pids),
                          (expected + expected_part2) / 2, atol=1e-6)


# ---------------------------------------------------------------- verification (L_ver)

def test_verification_loss_targets_same_identity_pairs_with_bce_on_logits(monkeypatch):
    model = tiny_casn(monkeypatch, channels=2, siamese_dim=2)
    set_linear(model.verifier, [[0.5, -1.0]], [0.25])
    engine, terms = tiny_engine(model)
    siamese = torch.tensor([[1., 2.], [0., 1.],   # pair 0: (f_a - f_b)^2 = (1, 1) -> z = -0.25
                            [0., 0.], [2., 0.],   # pair 1: (4, 0) -> z = 2.25
                            [1., 1.], [1., 3.]])  # pair 2: (0, 4) -> z = -3.75
    pids = torch.tensor([0, 0, 1, 2, 3, 3])  # pairs (0, 1), (2, 3), (4, 5): same, different, same
    loss = terms['loss_ver'].fn(engine, {'pid': pids}, CASNStep(None, None, siamese))

    def bce(z, y):  # -[y log sigmoid(z) + (1 - y) log(1 - sigmoid(z))]
        return -(y * math.log(sig(z)) + (1 - y) * math.log(1 - sig(z)))

    expected = (bce(-0.25, 1) + bce(2.25, 0) + bce(-3.75, 1)) / 3
    assert loss.item() == pytest.approx(expected, abs=1e-6)


# ---------------------------------------------------------------- Siamese attention (L_sa)

def test_importance_score_is_the_sum_of_the_positive_siamese_entries(monkeypatch):
    model = tiny_casn(monkeypatch, channels=2, siamese_dim=3)
    set_linear(model.siamese, [[1., 0.], [0., -1.], [1., 1.]], [0., 0.5, -2.])
    set_linear(model.classifier, [[1., 0.], [0., 1.]], [0., 0.])
    maps = torch.tensor([[[[1., 1.]], [[1., 3.]]],     # f = (1, 2): e = (1, -1.5, 1)
                         [[[2., 4.]], [[0.4, 0.]]]])   # f = (3, .2): e = (3, .3, 1.2)
    recorded = []

    def spy(m, scores):
        cam = differentiable_cam(m, scores)
        recorded.append((scores.detach().clone(), cam.detach().clone()))
        return cam

    differentiable_cam = attention.differentiable_cam
    monkeypatch.setattr(attention, 'differentiable_cam', spy)
    siamese_attention_loss(model, maps.clone().requires_grad_(True), torch.tensor([True]))
    (scores, cam), = recorded
    assert torch.allclose(scores, torch.tensor([1 + 1, 3 + 0.3 + 1.2]), atol=1e-6)  # -1.5 left out
    # image 0: d s / d A_k = (W[0, k] + W[2, k]) / 2 = (1, .5): raw (1.5, 2.5) -> (0, 1);
    # summing every entry instead gives weights (1, 0): the constant map A_0 = (1, 1), normalised to 0
    assert torch.allclose(cam[0], torch.tensor([[0., 1.]]), atol=1e-6)

    # the visualisation's Siamese map uses the same score (and the identification map the argmax)
    recorded.clear()
    casn_attention_maps(model, maps)
    (id_scores, _), (sa_scores, sa_cam) = recorded
    assert torch.allclose(id_scores, torch.tensor([2., 3.]), atol=1e-6)  # max(1, 2), max(3, .2)
    assert torch.allclose(sa_scores, torch.tensor([2., 4.5]), atol=1e-6)
    assert torch.allclose(sa_cam[0], torch.tensor([[0., 1.]]), atol=1e-6)


# One channel, Siamese FC = 1 x 1 identity: the importance score is mean(A) > 0, its Grad-CAM is
# relu(A / 3), normalised: the map A itself (each has min 0, max 1). Above 0.5 is a 1 x 2 (or 1 x 1)
# crop; roi_align samples the crop's cell-centre span linearly, so output cell j of 3 is
# v0 + (v1 - v0) (j + 1/2) / 3 for a crop with values v0, v1 (and v0 everywhere for one cell).
SA_MAPS = [[0.0, 1.0, 0.6], [0.0, 1.0, 1.0],   # pair 0: same identity
           [0.0, 0.8, 1.0], [0.0, 1.0, 1.0]]   # pair 1: different identities


def sa_model(monkeypatch):
    model = tiny_casn(monkeypatch, channels=1, siamese_dim=1)
    set_linear(model.siamese, [[1.0]], [0.0])
    return model


def hand_sa_distances():
    def aligned(v0, v1):
        return [v0 + (v1 - v0) * (j + 0.5) / 3 for j in range(3)]

    def l2(a, b):
        return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b)))

    positive = l2(aligned(1.0, 0.6), aligned(1.0, 1.0))  # (.9333, .8, .6667) vs 1: 0.394405
    negative = l2(aligned(0.8, 1.0), aligned(1.0, 1.0))  # (.8333, .9, .9667) vs 1: 0.197203
    return positive, negative


def test_siamese_attention_is_the_mean_l2_distance_over_positive_pairs_only(monkeypatch):
    model = sa_model(monkeypatch)
    maps = torch.tensor(SA_MAPS).view(4, 1, 1, 3).requires_grad_(True)  # conv maps are in the graph
    positive, negative = hand_sa_distances()
    assert positive == pytest.approx(0.394405, abs=1e-6) and negative == pytest.approx(0.197203, abs=1e-6)

    def loss(flags):
        return siamese_attention_loss(model, maps, torch.tensor(flags), threshold=0.5).item()

    assert loss([True, False]) == pytest.approx(positive, abs=1e-5)  # the negative pair ignored
    assert loss([False, True]) == pytest.approx(negative, abs=1e-5)
    assert loss([True, True]) == pytest.approx((positive + negative) / 2, abs=1e-5)  # a mean
    assert loss([False, False]) == 0.0


def test_engine_sa_term_flags_same_identity_pairs_as_positive(monkeypatch):
    model = sa_model(monkeypatch)
    engine, terms = tiny_engine(model)
    maps = torch.tensor(SA_MAPS).view(4, 1, 1, 3).requires_grad_(True)
    loss = terms['loss_sa'].fn(engine, {'pid': torch.tensor([7, 7, 1, 2])}, CASNStep(None, maps, None))
    assert loss.item() == pytest.approx(hand_sa_distances()[0], abs=1e-5)


def test_alignment_keeps_only_cells_above_the_threshold_and_their_gradient():
    # above 0.5: cells 0 and 2, so the crop spans all three and the middle cell (0.2) is zeroed
    cams = torch.tensor([[[0.9, 0.2, 0.7]]], requires_grad=True)
    out = aligned_attention(cams, 0.5, (1, 3))
    # kept values (0.9, 0, 0.7) at positions 0, 1, 2; bin j of 3 over [0, 2] averages the samples
    # at 2 (j + 1/4) / 3 and 2 (j + 3/4) / 3: (1/6, 1/2), (5/6, 7/6), (3/2, 11/6)
    kept = [0.9, 0.0, 0.7]

    def at(p):
        i = min(int(p), 1)
        return kept[i] + (kept[i + 1] - kept[i]) * (p - i)

    expected = [(at(2 * (j + 0.25) / 3) + at(2 * (j + 0.75) / 3)) / 2 for j in range(3)]
    assert expected == pytest.approx([0.6, 0.4 / 3, 1.4 / 3], abs=1e-9)
    assert torch.allclose(out[0, 0], torch.tensor(expected), atol=1e-6)
    grad, = torch.autograd.grad(out.sum(), cams)
    # d sum / d cell = the sum of its interpolation weights over the six samples, halved:
    # cell 0: (5/6 + 1/2 + 1/6) / 2 = 3/4; cell 2 likewise; the zeroed cell 1: none
    assert torch.allclose(grad[0, 0], torch.tensor([0.75, 0.0, 0.75]), atol=1e-6)


# ---------------------------------------------------------------- where gradients flow

def finite_difference(fn, tensor, eps=1e-6):
    grad = torch.zeros_like(tensor)
    flat = grad.view(-1)
    for i in range(tensor.numel()):
        with torch.no_grad():
            saved = tensor.view(-1)[i].item()
            tensor.view(-1)[i] = saved + eps
        up = fn().item()
        with torch.no_grad():
            tensor.view(-1)[i] = saved - eps
        down = fn().item()
        with torch.no_grad():
            tensor.view(-1)[i] = saved
        flat[i] = (up - down) / (2 * eps)
    return grad


def test_ia_loss_trains_through_the_grad_cam_mask_second_order(monkeypatch):
    """No stop-gradient on the mask: L_ia reaches the conv maps only through the Grad-CAM mask,
    and the classifier also through the Grad-CAM weights dS/dA (``create_graph=True``). Autograd
    must agree with central differences of the whole loss."""
    torch.manual_seed(0)
    model = tiny_casn(monkeypatch, channels=2).double()
    with torch.no_grad():
        model.classifier.weight.copy_(torch.rand(2, 2, dtype=torch.float64) + 0.2)
    images = torch.rand(2, 2, 3, 3, dtype=torch.float64) + 0.5
    maps = (torch.rand(2, 2, 3, 3, dtype=torch.float64) + 0.5).requires_grad_(True)
    pids = torch.tensor([0, 1])

    def loss():
        return identification_attention_loss(model, images, maps, pids, alpha=4.0, beta=0.5)[0]

    weight = model.classifier.weight
    grad_maps, grad_weight = torch.autograd.grad(loss(), (maps, weight), allow_unused=True)
    assert grad_maps is not None and grad_maps.abs().sum() > 1e-4
    assert torch.allclose(grad_maps, finite_difference(loss, maps), atol=1e-7)
    assert torch.allclose(grad_weight, finite_difference(loss, weight), atol=1e-7)


def test_sa_loss_gradients_match_finite_differences(monkeypatch):
    """L_sa reaches the Siamese FC only through the Grad-CAM weights (second order), and the maps
    through the kept cells; the crop boxes and the threshold mask are piecewise constant."""
    torch.manual_seed(0)
    model = tiny_casn(monkeypatch, channels=2, siamese_dim=3).double()
    # embeddings about (0.45, -0.45, 1.5): one entry left out of the importance score; every
    # Grad-CAM cell lies at least 0.07 from the threshold, so no box moves under the differences
    set_linear(model.siamese, [[1.0, -0.6], [-0.8, 0.5], [0.4, 0.7]], [0.1, -0.2, 0.3])
    maps = (torch.rand(2, 2, 3, 4, dtype=torch.float64) + 0.5).requires_grad_(True)
    positive = torch.tensor([True])

    def loss():
        return siamese_attention_loss(model, maps, positive, threshold=0.5)

    weight = model.siamese.weight
    grad_maps, grad_weight = torch.autograd.grad(loss(), (maps, weight), allow_unused=True)
    assert loss().item() > 0.05
    assert grad_weight is not None and grad_weight.abs().sum() > 1e-4
    assert torch.allclose(grad_maps, finite_difference(loss, maps), atol=1e-6)
    assert torch.allclose(grad_weight, finite_difference(loss, weight), atol=1e-6)
