"""The API-Net model: equations, torchreid's model contract, gradients, registration."""
import numpy as np
import pytest
import torch
import torch.nn as nn
import torchreid

import plugins
from projects.apinet.losses import mine_pairs, pair_cross_entropy, score_ranking_loss
from projects.apinet.model import (APINet, AttentivePairInteraction, gate_vectors,
                                   pairwise_interaction)


@pytest.fixture(scope='module')
def model():
    torch.manual_seed(0)
    return torchreid.models.build_model('apinet_resnet50', num_classes=6, loss='triplet',
                                        pretrained=False)


@pytest.fixture(scope='module')
def variant():
    """The paper's head: plain CE output, last stride 2, no BNNeck."""
    torch.manual_seed(1)
    return APINet(6, loss='softmax', last_stride=2, bnneck=False)


def images(n=8, seed=0):
    return torch.randn(n, 3, 32, 16, generator=torch.Generator().manual_seed(seed))


def test_gates_lie_strictly_between_zero_and_one():
    g = torch.Generator().manual_seed(0)
    api = AttentivePairInteraction(16, hidden_dim=8)
    x1, x2 = torch.randn(5, 16, generator=g), torch.randn(5, 16, generator=g)
    g1, g2 = gate_vectors(api.mutual_vector(x1, x2), x1, x2)
    for gate in (g1, g2):
        assert gate.shape == (5, 16) and ((gate > 0) & (gate < 1)).all()


def test_gates_are_the_sigmoid_of_the_channelwise_product():
    x_m = torch.tensor([[0.0, 1.0, -2.0]])
    x_1, x_2 = torch.tensor([[5.0, float(np.log(3.0)), 1.0]]), torch.tensor([[1.0, 0.0, 0.5]])
    g_1, g_2 = gate_vectors(x_m, x_1, x_2)
    assert torch.allclose(g_1, torch.tensor([[0.5, 0.75, 1 / (1 + np.e ** 2)]]))
    assert torch.allclose(g_2, torch.tensor([[0.5, 0.5, 1 / (1 + np.e)]]))


def test_interaction_follows_the_paper():
    x1, x2 = torch.tensor([[1., 2.]]), torch.tensor([[3., 4.]])
    g1, g2 = torch.tensor([[0.5, 0.25]]), torch.tensor([[0.125, 1.0]])
    x1_self, x1_other, x2_self, x2_other = pairwise_interaction(x1, x2, g1, g2)
    assert x1_self.tolist() == [[1.5, 2.5]] and x1_other.tolist() == [[1.125, 4.0]]
    assert x2_self.tolist() == [[3.375, 8.0]] and x2_other.tolist() == [[4.5, 5.0]]


def test_mutual_mlp_is_linear_dropout_linear_like_the_official_code():
    api = AttentivePairInteraction(2048)
    kinds = [type(m) for m in api.mutual]
    assert kinds == [nn.Linear, nn.Dropout, nn.Linear]
    assert (api.mutual[0].in_features, api.mutual[0].out_features) == (4096, 512)
    assert (api.mutual[2].in_features, api.mutual[2].out_features) == (512, 2048)
    api.eval()  # no dropout: the module is then affine in [x1; x2] -> x_m
    x = torch.randn(3, 4096, dtype=torch.float64)
    api.double()
    f = lambda v: api.mutual(v)  # noqa: E731
    assert torch.allclose(f(2 * x) - f(x), f(x) - f(0 * x))


def test_training_and_eval_outputs_follow_torchreid(model, variant):
    x = images()
    model.train()
    variant.train()
    with torch.no_grad():
        logits, pooled = model(x)
        assert logits.shape == (8, 6) and pooled.shape == (8, 2048)
        assert variant(x).shape == (8, 6)
    model.eval()
    variant.eval()
    with torch.no_grad():
        assert model(x, return_featuremaps=True).shape == (8, 2048, 2, 1)  # last stride 1
        assert variant(x, return_featuremaps=True).shape == (8, 2048, 1, 1)  # last stride 2
        assert model(x).shape == (8, 2048)
    with pytest.raises(KeyError, match='Unsupported loss'):
        APINet(6, loss='htri')


def test_inference_is_the_pooled_feature_and_ignores_the_pair(model, variant):
    x = images(seed=1)
    model.eval()
    with torch.no_grad():
        feature = model(x)
        pooled = model.head.pool(model.trunk(x)).flatten(1)
        assert torch.equal(feature, pooled)
        saved = {k: v.clone() for k, v in model.api.state_dict().items()}
        for p in model.api.parameters():
            p.add_(torch.randn_like(p))
        assert torch.equal(model(x), feature)  # the pair path does not run in eval mode
        model.api.load_state_dict(saved)
        model.head.eval_feature = 'bnneck'  # BoT's "after BN" retrieval feature
        try:
            assert torch.equal(model(x), model.head.neck(pooled))
        finally:
            model.head.eval_feature = 'pooled'
        variant.eval()
        assert torch.equal(variant(x), variant.head.pool(variant.trunk(x)).flatten(1))
    with pytest.raises(ValueError, match='eval_feature'):
        APINet(6, eval_feature='after')


def test_pair_logits_and_the_engine_pair_outputs(model):
    from projects.apinet.engine import pair_outputs

    model.eval()  # no dropout: exact comparisons
    pids = torch.tensor([0, 0, 1, 1, 2, 2, 2, 3])  # identity 3 has a single image
    with torch.no_grad():
        pooled = model.head.pool(model.trunk(images(seed=3))).flatten(1)
        features = model.neck_features(pooled)
        out = pair_outputs(model, pooled, pids)
        pairs = mine_pairs(features, pids)
        x1_self, x1_other, x2_self, x2_other = model.api(features[pairs.anchor],
                                                         features[pairs.partner])
        fc = model.head.classifier
        assert torch.allclose(out.self_logits, fc(torch.cat([x1_self, x2_self])))
        assert torch.allclose(out.other_logits, fc(torch.cat([x1_other, x2_other])))
    assert out.self_logits.shape == (32, 6)  # 2B pairs x (anchor, partner)
    assert torch.equal(out.labels, torch.cat([pids[pairs.anchor], pids[pairs.partner]]))
    assert torch.equal(out.labels[:8], pids) and torch.equal(out.labels[16:24], pids)  # intra partners
    assert (out.labels[24:] != pids).all()  # inter partners
    assert out.valid.tolist() == ([True] * 7 + [False] + [True] * 8) * 2


def test_feature_extractor_with_one_class(tmp_path, model):
    """torchreid's FeatureExtractor builds the model with num_classes=1 and loads a checkpoint."""
    path = tmp_path / 'apinet.pth'
    torch.save({'state_dict': model.state_dict()}, path)
    extractor = torchreid.utils.FeatureExtractor('apinet_resnet50', model_path=str(path),
                                                 image_size=(32, 16), device='cpu', verbose=False)
    features = extractor([np.zeros((32, 16, 3), dtype=np.uint8)] * 2)
    assert features.shape == (2, 2048)


def test_gradients_reach_the_api_mlp_the_bnneck_and_the_trunk(model):
    model.train()
    model.zero_grad(set_to_none=True)
    pids = torch.arange(4).repeat_interleave(2)
    _, pooled = model(images(seed=2))
    features = model.neck_features(pooled)
    pairs = mine_pairs(features, pids)
    self_logits, other_logits = model.pair_logits(features, pairs.anchor, pairs.partner)
    labels = pids[torch.cat([pairs.anchor, pairs.partner])]
    valid = torch.cat([pairs.valid] * 2)
    loss = (pair_cross_entropy(self_logits, other_logits, labels, valid)
            + score_ranking_loss(self_logits, other_logits, labels, valid))
    loss.backward()
    for name in ('api.mutual.0.weight', 'api.mutual.2.weight', 'head.classifier.1.weight',
                 'head.neck.weight', 'trunk.stem.0.weight', 'trunk.stages.3.2.conv3.weight'):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert model.head.neck.bias.grad is None  # frozen bias


def test_models_engine_config_and_benchmark_are_registered():
    from plugins.registry import BENCHMARKS

    assert {'apinet_resnet50', 'apinet_resnet101'} <= set(plugins.available_models())
    assert 'apinet_resnet50' in torchreid.models.show_avai_models.__globals__['__model_factory']
    assert 'apinet' in plugins.ENGINES and 'apinet' in plugins.CONFIG_NODES
    assert 'apinet' in BENCHMARKS and 'apinet' in plugins.load_projects()
    cfg = plugins.get_default_config()
    assert cfg.apinet.rank_margin == 0.05 and cfg.apinet.weight_rank == 1.0
    deep = torchreid.models.build_model('apinet_resnet101', num_classes=3, pretrained=False)
    assert isinstance(deep, APINet) and len(deep.trunk.stages[2]) == 23
