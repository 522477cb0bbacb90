"""RGA models: shapes, parameter counts, branch order, exactness against the official computation."""
import copy

import pytest
import torch
import torchreid

import plugins
from plugins.benchmarking.steps import step_engine
from plugins.nn.pretrained import PretrainedWeightsNotFound
from projects.rga.model import RGANet, rga_attention_maps
from projects.rga.modules import RGAModule, relation_features
from projects.rga.reference import reference_forward, reference_rga
from tests.helpers import amp_step

VARIANTS = ['s', 'c', 'sc']


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize('name, expected', [('rga_sc_resnet50', 31364272),
                                            ('rga_s_resnet50', 28273976),
                                            ('rga_c_resnet50', 28140472)])
def test_parameter_counts_equal_the_official_models(name, expected):
    model = torchreid.models.build_model(name, 751, loss='triplet', pretrained=False)
    assert sum(p.numel() for p in model.parameters()) == expected
    assert (model.height, model.width) == (256, 128)  # plain build_model: the official size


@pytest.mark.parametrize('variant', VARIANTS)
def test_output_contract_in_train_and_eval_modes(variant):
    torch.manual_seed(0)
    x = torch.randn(4, 3, 64, 32)
    softmax = RGANet(7, 'softmax', variant, height=64, width=32).train()
    assert softmax(x).shape == (4, 7)
    triplet = RGANet(7, 'triplet', variant, height=64, width=32).train()
    logits, feature = triplet(x)
    assert logits.shape == (4, 7) and feature.shape == (4, 2048)
    triplet.eval()
    with torch.no_grad():
        assert triplet(x).shape == (4, 2048)
        maps = triplet(x, return_featuremaps=True)
        assert maps.shape == (4, 2048, 4, 2)  # last stride 1: 64x32 -> 4x2
        assert torch.allclose(triplet(x), maps.mean((2, 3)), atol=1e-5)  # pooled feature


def test_builders_receive_the_config_input_size_and_reject_other_sizes():
    model = plugins.build_model('rga_sc_resnet50', 5, loss='softmax', pretrained=False,
                                height=96, width=48)
    assert (model.height, model.width) == (96, 48)
    assert [m.in_spatial for m in model.rga] == [24 * 12, 12 * 6, 6 * 3, 6 * 3]
    with pytest.raises(ValueError, match=r'built for 96x48 inputs but got 64x32'):
        model(torch.randn(2, 3, 64, 32))


def test_pretrained_without_local_weights_names_the_file(tmp_path):
    with pytest.raises(PretrainedWeightsNotFound, match='resnet50-19c8e357.pth'):
        plugins.build_model('rga_s_resnet50', 5, pretrained=True, pretrained_path=str(tmp_path))


def test_spatial_branch_runs_first_and_channel_reads_its_output():
    """RGA-SC = channel(spatial(x)), as the official code; this fails if channel runs first."""
    torch.manual_seed(0)
    module = RGAModule(32, 8 * 4, True, True).eval()
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn_like(p))
        x = torch.randn(3, 32, 8, 4)
        spatial_first = x * module.spatial_attention(x)
        spatial_first = spatial_first * module.channel_attention(spatial_first)
        channel_first = x * module.channel_attention(x)
        channel_first = channel_first * module.spatial_attention(channel_first)
        out = module(x)
        assert torch.allclose(out, spatial_first, atol=1e-6)
        assert not torch.allclose(out, channel_first, atol=1e-3)
        assert torch.allclose(reference_forward(module, x), spatial_first, atol=1e-5)


def test_relation_features_equal_the_materialised_convolution():
    torch.manual_seed(0)
    theta, phi = torch.randn(2, 5, 12, dtype=torch.float64), torch.randn(2, 5, 12, dtype=torch.float64)
    weight = torch.randn(7, 24, 1, 1, dtype=torch.float64)
    g = theta.transpose(1, 2) @ phi  # G[i, j] = theta_i . phi_j
    joint = torch.cat([g.transpose(1, 2), g], 1)  # channel k at node j: G[j, k], then G[k, j]
    expected = torch.einsum('ok,bkj->boj', weight.flatten(1), joint)
    assert torch.allclose(relation_features(theta, phi, weight), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('variant', VARIANTS)
@pytest.mark.parametrize('size', [(64, 32), (96, 48)])
def test_whole_model_equals_the_official_computation_forward_and_backward(variant, size):
    """Exact in float64 at two input sizes: features, logits and every parameter's gradient."""
    torch.manual_seed(0)
    ours = RGANet(6, 'triplet', variant, height=size[0], width=size[1]).double().train()
    oracle = copy.deepcopy(ours)
    x = torch.randn(4, 3, *size, dtype=torch.float64)
    pids = torch.tensor([0, 0, 1, 1])

    def loss_of(model):
        logits, feature = model(x)
        return torch.nn.functional.cross_entropy(logits, pids) + feature.pow(2).mean(), feature

    loss, feature = loss_of(ours)
    loss.backward()
    with reference_rga(oracle):
        oracle_loss, oracle_feature = loss_of(oracle)
        oracle_loss.backward()
    assert rel_err(feature, oracle_feature) < 1e-10
    for (name, p), q in zip(ours.named_parameters(), oracle.parameters()):
        if q.grad is None:
            assert p.grad is None, name
            continue
        if q.grad.norm() == 0:
            assert p.grad.norm() == 0, name
        else:
            assert rel_err(p.grad, q.grad) < 1e-8, name
    assert all('forward' not in vars(m) for m in oracle.rga)  # the oracle is switched off again


@pytest.mark.parametrize('channels, height, width', [(256, 64, 32), (2048, 16, 8)])
def test_module_at_the_paper_size_matches_in_float32(channels, height, width):
    """Stage-1 spatial and stage-4 channel sizes at 256x128, fp32: within 1e-4 relative."""
    torch.manual_seed(0)
    module = RGAModule(channels, height * width, True, True).train()
    oracle = copy.deepcopy(module)
    x = torch.randn(2, channels, height, width, requires_grad=True)
    x_oracle = x.detach().clone().requires_grad_()
    out = module(x)
    expected = reference_forward(oracle, x_oracle)
    assert rel_err(out, expected) < 1e-4
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    expected.backward(grad_out)
    assert rel_err(x.grad, x_oracle.grad) < 1e-4


@pytest.mark.parametrize('variant', VARIANTS)
def test_gradients_reach_every_rga_parameter_and_bnneck_bias_stays_frozen(variant):
    torch.manual_seed(0)
    model = RGANet(4, 'triplet', variant, height=64, width=32).train()
    logits, feature = model(torch.randn(4, 3, 64, 32))
    (torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 3])) + feature.mean()).backward()
    for name, p in model.rga.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert model.head.neck.bias.grad is None


@pytest.mark.parametrize('variant', VARIANTS)
def test_attention_values_and_visualisation_maps(variant):
    torch.manual_seed(0)
    model = RGANet(4, variant=variant, height=64, width=32).eval()
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        _, attention = model.featuremaps(x, return_attention=True)
    sizes = model.trunk.output_sizes(64, 32)[1:]
    for k, maps in enumerate(attention):
        assert set(maps) == {'s': {'spatial'}, 'c': {'channel'}, 'sc': {'spatial', 'channel'}}[variant]
        if 'spatial' in maps:
            assert maps['spatial'].shape == (2, 1) + sizes[k]
        if 'channel' in maps:
            assert maps['channel'].shape == (2, model.rga[k].in_channel, 1, 1)
        for a in maps.values():
            assert a.min() > 0 and a.max() < 1
    from plugins.visualization import attention_maps
    shown = attention_maps('rga_{}_resnet50'.format(variant), model, x)
    assert len(shown) == 4 * len(attention[0]) and set(shown) == set(rga_attention_maps(model, x))
    for name, m in shown.items():
        assert m.shape[0] == 2 and m.min() >= 0 and m.max() <= 1, name


def test_bad_variant_is_named():
    with pytest.raises(ValueError, match="Unknown RGA variant 'cs'"):
        RGANet(3, variant='cs')


def test_trains_under_bf16_autocast():
    torch.manual_seed(0)
    model = plugins.build_model('rga_sc_resnet50', 4, loss='triplet', pretrained=False,
                                height=64, width=32)
    engine = step_engine(model, 4, 'triplet', opts=['train.amp', 'bf16'])
    batch = {'img': torch.randn(8, 3, 64, 32), 'pid': torch.arange(8) // 2}
    assert {'loss_t', 'loss_x'} <= set(amp_step(engine, batch))
