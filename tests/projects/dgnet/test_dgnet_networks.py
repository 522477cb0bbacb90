"""DG-Net networks: parameter counts equal the official ones, shapes, detached appearance
code, AdaIN parameter routing, retrieval feature, discriminator losses and R1 penalty."""
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from projects.dgnet.networks import (AdaINParameterMLPs, AdaINResidualBlock, AppearanceEncoder,
                                     Decoder, Generator, LayerNorm, MultiScaleDiscriminator,
                                     UpsampledConv2d, adaptive_instance_norm, conv_layers,
                                     discriminator_loss, generator_adversarial_loss, r1_penalty,
                                     upsampled_conv2d)
from tests.helpers import CUDA

# Smallest convenient 2:1 size: the dilation-9 ASPP branch needs a structure code of at least 10x10.
SMALL = (80, 40)


@pytest.fixture(scope='module', autouse=True)
def single_thread():
    """Tiny inputs: one intra-op thread avoids oversubscribing a busy CPU (100x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def count(module):
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope='module')
def appearance_encoder():
    torch.manual_seed(0)
    return AppearanceEncoder(751)


@pytest.fixture(scope='module')
def generator():
    torch.manual_seed(0)
    return Generator()


def test_parameter_counts_equal_the_official_networks(appearance_encoder, generator):
    # ft_netAB with 751 classes: 28,427,782 official, less torchvision's unused fc (2,049,000).
    assert count(appearance_encoder) == 26378782
    assert count(appearance_encoder.primary) == count(appearance_encoder.fine) == 1435375
    assert count(generator.structure_encoder) == 380544
    assert count(generator.decoder) == 1455555
    assert count(generator.adain_mlps) == 11544576
    assert count(generator) == 13380675  # AdaINGen
    discriminator = MultiScaleDiscriminator()
    assert count(discriminator) == 1025571
    assert [count(s) for s in discriminator.scales] == [341857] * 3


def test_discriminator_pyramid_averages_without_the_padding():
    # count_include_pad=False: a constant image stays constant at the borders of every scale.
    pooled = MultiScaleDiscriminator().downsample(torch.ones(1, 3, 6, 4))
    assert torch.equal(pooled, torch.ones(1, 3, 3, 2))


def test_shapes_at_a_small_input(appearance_encoder, generator):
    torch.manual_seed(0)
    images = torch.randn(2, 3, *SMALL)
    code, (primary, fine) = appearance_encoder.train().encode(images)
    assert code.shape == (2, 8192)
    assert primary.shape == fine.shape == (2, 751)
    structure = generator.encode(images)
    assert structure.shape == (2, 128, 20, 10)
    generated = generator.decode(structure, code)
    assert generated.shape == (2, 3, *SMALL)
    outputs = MultiScaleDiscriminator()(generated)
    assert [tuple(o.shape) for o in outputs] == [(2, 1, 20, 10), (2, 1, 10, 5), (2, 1, 5, 3)]


def test_shapes_at_256x128_on_the_meta_device():
    with torch.device('meta'):
        appearance_encoder = AppearanceEncoder(751).eval()
        generator, discriminator = Generator(), MultiScaleDiscriminator()
        images = torch.empty(2, 3, 256, 128)
        code, _ = appearance_encoder.encode(images)
        structure = generator.encode(images)
        generated = generator.decode(structure, code)
        outputs = discriminator(generated)
        feature = appearance_encoder(images)
    assert code.shape == (2, 8192) and feature.shape == (2, 1024)
    assert structure.shape == (2, 128, 64, 32)
    assert generated.shape == (2, 3, 256, 128)
    assert [tuple(o.shape[-2:]) for o in outputs] == [(64, 32), (32, 16), (16, 8)]


def test_generator_losses_do_not_reach_the_appearance_encoder(appearance_encoder, generator):
    torch.manual_seed(0)
    appearance_encoder.train().zero_grad(set_to_none=True)
    generator.zero_grad(set_to_none=True)
    images = torch.randn(2, 3, *SMALL)
    code, _ = appearance_encoder.encode(images)
    assert not code.requires_grad
    generator(images.flip(0), code).abs().mean().backward()
    assert all(p.grad is None for p in appearance_encoder.parameters())
    # The same loss does train the generator (encoder, MLPs and decoder).
    for part in (generator.structure_encoder, generator.adain_mlps, generator.decoder):
        assert all(p.grad is not None for p in part.parameters())
    generator.zero_grad(set_to_none=True)


def test_appearance_code_is_the_official_channel_major_part_pooling(appearance_encoder):
    torch.manual_seed(0)
    images = torch.randn(2, 3, *SMALL)
    appearance_encoder.eval()
    with torch.no_grad():
        code, _ = appearance_encoder.encode(images)
        feature_map = appearance_encoder.trunk(images)  # (2, 2048, 5, 3)
    parts = code.view(2, 2048, 4)
    # Part p of channel c at entry 4c + p; with 5 rows, part 0 is rows 0-1, part 3 rows 3-4.
    assert torch.equal(parts[:, :, 0], feature_map[:, :, 0:2].amax(dim=(2, 3)))
    assert torch.equal(parts[:, :, 3], feature_map[:, :, 3:5].amax(dim=(2, 3)))


def test_mlp_k_drives_decoder_block_k_only():
    torch.manual_seed(0)
    mlps, decoder = AdaINParameterMLPs(), Decoder()
    # What the MLPs emit is what the blocks consume: 8 AdaIN layers x 128 channels.
    assert mlps.out_channels == decoder.adain_channels == 8 * 128
    assert [block.adain_channels for block in decoder.blocks] == [256] * 4
    code = torch.randn(2, 8192)
    changed = code.clone()
    changed[:, 2048:4096] += 1.0  # chunk 1 only
    with torch.no_grad():
        (w, b), (w2, b2) = mlps(code), mlps(changed)
    assert w.shape == b.shape == (2, 1024)
    for before, after in ((w, w2), (b, b2)):
        moved = (before != after).any(dim=0)
        assert moved[256:512].all() and not moved[:256].any() and not moved[512:].any()
    with pytest.raises(ValueError, match='1024 AdaIN parameters'):
        decoder(torch.randn(2, 128, 10, 10), w[:, :768], b[:, :768])


def test_adain_parameters_reach_the_layers_in_the_official_order():
    torch.manual_seed(0)
    block = AdaINResidualBlock(4)
    x, weight, bias = torch.randn(2, 4, 6, 5), torch.randn(2, 8), torch.randn(2, 8)
    # assign_adain_params: first 4 columns to the first conv's AdaIN, next 4 to the second's.
    hidden = F.leaky_relu(adaptive_instance_norm(block.conv1(x), weight[:, :4], bias[:, :4]), 0.2)
    expected = x + adaptive_instance_norm(block.conv2(hidden), weight[:, 4:], bias[:, 4:])
    assert torch.allclose(block(x, weight, bias), expected, atol=1e-6)
    decoder = Decoder()
    structure = torch.randn(1, 128, 10, 10)
    weight, bias = torch.randn(1, 1024), torch.randn(1, 1024)
    with torch.no_grad():
        hidden = structure
        for k, blk in enumerate(decoder.blocks):  # block k reads columns [256k, 256k + 256)
            hidden = blk(hidden, weight[:, 256 * k:256 * (k + 1)], bias[:, 256 * k:256 * (k + 1)])
        assert torch.allclose(decoder(structure, weight, bias), decoder.to_image(hidden), atol=1e-5)


def test_functional_adain_equals_the_official_batch_norm_formulation():
    torch.manual_seed(0)
    x, weight, bias = torch.randn(3, 4, 5, 6), torch.randn(3, 4), torch.randn(3, 4)
    # Official AdaptiveInstanceNorm2d: batch norm (training) over the (1, N*C, H, W) view.
    official = F.batch_norm(x.reshape(1, 12, 5, 6), torch.zeros(12), torch.ones(12),
                            weight.reshape(-1), bias.reshape(-1), True, 0.1, 1e-5).view_as(x)
    assert torch.allclose(adaptive_instance_norm(x, weight, bias), official, atol=1e-5)
    # by hand: each (sample, channel) map to zero mean and unit biased variance, then w x + b
    mean, var = x.mean((2, 3), keepdim=True), x.var((2, 3), unbiased=False, keepdim=True)
    by_hand = (x - mean) / (var + 1e-5).sqrt() * weight[:, :, None, None] + bias[:, :, None, None]
    assert torch.allclose(adaptive_instance_norm(x, weight, bias), by_hand, atol=1e-5)


def _saved_activations(fn, x):
    """Sizes of the storages, other than the input ``x``'s and at least its size, that the
    backward of ``fn(x)`` keeps: the activations it adds (not the weights)."""
    kept = {}

    def pack(t):
        storage = t.untyped_storage().data_ptr()
        if t.numel() >= x.numel() and storage != x.untyped_storage().data_ptr():
            kept[storage] = t.numel()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x)
    return sorted(kept.values())


def test_generator_layers_keep_one_copy_of_each_activation_for_the_backward():
    """The memory of the official layers: AdaIN is one operation keeping only its input (not
    also the normalised map it scales), and the leaky ReLU works in place, so the map it
    keeps is the next 1x1 convolution's input too."""
    x = torch.randn(2, 4, 6, 5, requires_grad=True)
    weight, bias = torch.randn(2, 4, requires_grad=True), torch.randn(2, 4, requires_grad=True)
    assert _saved_activations(lambda x: adaptive_instance_norm(x * 1, weight, bias), x) == [240]
    layers = nn.Sequential(*conv_layers(4, 4, 3), nn.Conv2d(4, 3, 1))
    # the padded input of the 3x3 convolution, and the activation (also the 1x1's input)
    assert _saved_activations(layers, x) == [2 * 4 * 6 * 5, 2 * 4 * 8 * 7]


def _assert_same_function(ours, official, inputs):
    """Equal float64 outputs, and equal gradients for every one of ``inputs`` under the same
    random output gradient."""
    assert ours.dtype == official.dtype == torch.float64
    assert torch.allclose(ours, official, rtol=0, atol=1e-12)
    grad = torch.randn_like(official)
    for g_ours, g_official in zip(torch.autograd.grad(ours, inputs, grad),
                                  torch.autograd.grad(official, inputs, grad)):
        assert torch.allclose(g_ours, g_official, rtol=0, atol=1e-12)


def _official_upsampled_conv(conv, x):
    """The official layers: nn.Upsample(scale_factor=2), then Conv2dBlock's reflection padding
    and convolution."""
    p = conv.kernel_size[0] // 2
    return F.conv2d(nn.ReflectionPad2d(p)(nn.Upsample(scale_factor=2)(x)), conv.weight, conv.bias)


@pytest.mark.parametrize('device', ['cpu', CUDA])
@pytest.mark.parametrize('kernel_size, size', [(3, (1, 2)), (3, (4, 3)), (5, (2, 2)), (5, (5, 4)),
                                               (5, (16, 8)), (7, (2, 3)), (7, (6, 5))])
def test_upsampled_convolution_equals_the_official_upsample_pad_convolution(kernel_size, size, device):
    """Output and every gradient, in float64, from the smallest inputs the reflection allows
    (where the top and bottom corrections meet) to the decoder's 2:1 maps."""
    torch.manual_seed(0)
    conv = UpsampledConv2d(3, 2, kernel_size).double().to(device)
    x = torch.randn(2, 3, *size, dtype=torch.float64, device=device, requires_grad=True)
    ours = conv(x)
    assert ours.shape == (2, 2, 2 * size[0], 2 * size[1])
    _assert_same_function(ours, _official_upsampled_conv(conv, x), (x, conv.weight, conv.bias))


def test_upsampled_convolution_by_hand_and_its_limits():
    conv = UpsampledConv2d(1, 1, 3)
    with torch.no_grad():  # only the top-left tap: output (i, j) is padded map (i, j)
        conv.weight.zero_()[0, 0, 0, 0] = 1
        conv.bias.zero_()
    x = torch.tensor([[1., 2.], [3., 4.]])[None, None]
    # upsampled rows/columns 0..3 hold x's 0, 0, 1, 1; reflected by 1: 0, 0, 0, 1
    expected = torch.tensor([[1., 1., 1., 2.], [1., 1., 1., 2.], [1., 1., 1., 2.], [3., 3., 3., 4.]])
    assert torch.equal(conv(x)[0, 0], expected)
    with pytest.raises(ValueError, match='square kernel of odd size at least 3, got 4x4'):
        UpsampledConv2d(1, 1, 4)
    with pytest.raises(ValueError, match='got 1x1'):
        upsampled_conv2d(x, torch.ones(1, 1, 1, 1), None)
    with pytest.raises(ValueError, match='got 3x5'):
        upsampled_conv2d(x, torch.ones(1, 1, 3, 5), None)
    with pytest.raises(ValueError, match='reflects 3 rows and columns .* got a 1x4 input'):
        UpsampledConv2d(1, 1, 7)(torch.randn(1, 1, 1, 4))


def test_upsampled_convolution_keeps_its_input_not_the_upsampled_map():
    """The official layers keep the upsampled map (the reflection padding's input) and the
    padded map (the convolution's), each over 4x the input; computed from the
    low-resolution input, only that input is kept."""
    conv = UpsampledConv2d(4, 3, 5)
    x = torch.randn(2, 4, 12, 10, requires_grad=True)  # larger than the weights' derived kernels
    assert _saved_activations(lambda x: conv(x * 1), x) == [2 * 4 * 12 * 10]
    assert _saved_activations(lambda x: _official_upsampled_conv(conv, x * 1), x) == [
        2 * 4 * 24 * 20, 2 * 4 * 28 * 24]


def test_a_decoder_checkpoint_with_separate_upsampling_layers_still_loads():
    """Before the upsampling and its convolution were one layer, ``to_image`` held Upsample,
    ReflectionPad2d, Conv2d, LayerNorm, LeakyReLU, Upsample, ReflectionPad2d, Conv2d, LayerNorm,
    LeakyReLU, then the 3x3 and 1x1 blocks: the parameters sat at indices 2, 3, 7, 8, 11, 14, 16."""
    torch.manual_seed(0)
    saved = Generator()
    earlier_index = {0: 2, 1: 3, 3: 7, 4: 8, 7: 11, 10: 14, 12: 16}
    earlier = {}
    for key, tensor in saved.state_dict().items():
        if key.startswith('decoder.to_image.'):
            index, rest = key[len('decoder.to_image.'):].split('.', 1)
            key = 'decoder.to_image.{}.{}'.format(earlier_index[int(index)], rest)
        earlier[key] = tensor
    assert 'decoder.to_image.16.weight' in earlier and 'decoder.to_image.0.weight' not in earlier
    loaded = Generator()
    loaded.load_state_dict(earlier)  # strict
    for (name, ours), theirs in zip(loaded.state_dict().items(), saved.state_dict().values()):
        assert torch.equal(ours, theirs), name
    assert [name for name, _ in loaded.named_parameters()] == [name for name, _ in saved.named_parameters()]


def test_layer_norm_uses_the_official_unbiased_std_plus_eps():
    torch.manual_seed(0)
    norm = LayerNorm(4)
    assert ((norm.gamma >= 0) & (norm.gamma < 1)).all() and not norm.beta.any()
    norm = norm.double()
    with torch.no_grad():
        norm.beta.uniform_(-1, 1)
    x = (torch.randn(2, 4, 3, 5, dtype=torch.float64) * 3 + 1).requires_grad_()
    # the official steps: normalise by the unbiased std plus eps, then the channel affine
    flat = x.flatten(1)
    official = (x - flat.mean(1).view(2, 1, 1, 1)) / (flat.std(1).view(2, 1, 1, 1) + 1e-5)
    official = official * norm.gamma.view(1, 4, 1, 1) + norm.beta.view(1, 4, 1, 1)
    _assert_same_function(norm(x), official, (x, norm.gamma, norm.beta))


def test_layer_norm_keeps_only_its_input_for_the_backward():
    """The official steps keep ``x - mean`` and the normalised map besides the input."""
    norm = LayerNorm(4)
    x = torch.randn(2, 4, 6, 5, requires_grad=True)
    assert _saved_activations(lambda x: norm(x * 1), x) == [x.numel()]


def test_structure_encoder_reads_grey_has_the_official_aspp_and_rejects_small_images(generator):
    torch.manual_seed(0)
    encoder = generator.structure_encoder
    aspp = encoder.layers[-1]
    assert [branch[4].dilation for branch in aspp.atrous] == [(3, 3), (6, 6), (9, 9)]
    images = torch.randn(1, 3, *SMALL)
    with torch.no_grad():
        assert torch.allclose(encoder(images), encoder(images.mean(1, keepdim=True)), atol=1e-6)
    with pytest.raises(ValueError, match='at least 37x37'):
        encoder(torch.randn(1, 3, 64, 32))  # a 16x8 code: the reflection pad of 9 does not fit


def test_train_outputs_logits_and_eval_outputs_the_weighted_normalised_embeddings(
        appearance_encoder):
    torch.manual_seed(0)
    images = torch.randn(2, 3, *SMALL)
    appearance_encoder.train()
    primary, fine = appearance_encoder(images)
    assert primary.shape == fine.shape == (2, 751)
    appearance_encoder.eval()
    with torch.no_grad():
        feature = appearance_encoder(images)
        pooled = F.adaptive_max_pool2d(appearance_encoder.trunk(images), 1).flatten(1)
        fine_embedding = appearance_encoder.fine.embedding(pooled)
    assert feature.shape == (2, 1024)
    assert torch.allclose(feature[:, :512].norm(dim=1), torch.ones(2), atol=1e-5)
    assert torch.allclose(feature[:, 512:].norm(dim=1), torch.full((2,), 0.5 ** 0.5), atol=1e-5)
    assert torch.allclose(feature[:, 512:], 0.5 ** 0.5 * F.normalize(fine_embedding, dim=1), atol=1e-6)
    with pytest.raises(ValueError, match='softmax'):
        AppearanceEncoder(5, loss='triplet')


def test_initialisation_follows_the_official_code(appearance_encoder):
    block = appearance_encoder.primary
    assert 0.0008 < block.classifier.weight.std().item() < 0.0012
    assert not block.classifier.bias.any() and not block.embedding[0].bias.any()
    assert torch.equal(block.embedding[1].weight, torch.ones(512))  # BatchNorm left at default
    torch.manual_seed(0)
    discriminator = MultiScaleDiscriminator()
    conv = discriminator.scales[0][-1]
    weights = torch.cat([m.weight.flatten() for m in discriminator.modules()
                         if isinstance(m, torch.nn.Conv2d)])
    assert 0.019 < weights.std().item() < 0.021 and not conv.bias.any()


def zero_discriminator():
    discriminator = MultiScaleDiscriminator()
    with torch.no_grad():
        for p in discriminator.parameters():
            p.zero_()
    return discriminator


def real_and_outputs(discriminator):
    """A real batch (requiring gradients, for R1) and D's outputs on it and on a fake batch."""
    torch.manual_seed(0)
    real = torch.randn(2, 3, 48, 24, requires_grad=True)
    fake = torch.randn(2, 3, 48, 24)
    return real, discriminator(real), discriminator(fake)


def test_lsgan_losses_of_a_zero_discriminator():
    real, real_outputs, fake_outputs = real_and_outputs(zero_discriminator())
    # D outputs 0 everywhere: fake terms 0, real terms (0 - 1)^2 = 1 per scale.
    assert discriminator_loss(fake_outputs, real_outputs).item() == pytest.approx(3.0)
    assert generator_adversarial_loss(fake_outputs).item() == pytest.approx(6.0)
    assert r1_penalty(real_outputs, real).item() == 0.0


def test_losses_are_non_negative_and_r1_trains_the_discriminator():
    torch.manual_seed(0)
    discriminator = MultiScaleDiscriminator()
    real, real_outputs, fake_outputs = real_and_outputs(discriminator)
    assert discriminator_loss(fake_outputs, real_outputs).item() > 0
    assert generator_adversarial_loss(fake_outputs).item() > 0
    penalty = r1_penalty(real_outputs, real)
    assert penalty.item() > 0
    penalty.backward()
    assert discriminator.scales[2][0].weight.grad.abs().sum() > 0
    fake = real.detach()  # images without gradients cannot give R1
    with pytest.raises(ValueError, match='requires_grad_'):
        r1_penalty(discriminator(fake), fake)


def test_r1_penalty_against_a_hand_computation():
    images = torch.randn(3, 2, 4, 5, requires_grad=True)
    # d(2x).sum()/dx = 2 and d(3 x.sum())/dx = 3 everywhere: per sample 2*4*5 = 40 entries.
    outputs = [2 * images, 3 * images.sum(dim=(1, 2, 3))]
    assert r1_penalty(outputs, images).item() == pytest.approx(40 * (4 + 9))


def test_appearance_encoder_alone_exports_to_onnx_with_parity(tmp_path):
    """E_a is the ReID model at test time: its retrieval feature exports without the classifiers."""
    from plugins.export import check_parity, export_onnx
    torch.manual_seed(0)
    encoder = AppearanceEncoder(7).eval()
    path = export_onnx(encoder, str(tmp_path / 'dgnet_ea.onnx'), 64, 32, [0.485, 0.456, 0.406],
                       [0.229, 0.224, 0.225], model_name='dgnet_ea')
    report = check_parity(encoder, path, torch.randn(3, 3, 64, 32))
    assert report['feature_dim'] == 1024 and report['num_images'] == 3


def test_retrieval_ranking_is_the_official_score():
    """Official score (``reid_eval/evaluate_gpu.py``): p_q.p_g + 0.5 f_q.f_g on the normalised
    primary and fine-grained embeddings. torchreid ranks our features by Euclidean distance."""
    from torchreid.reid.metrics import compute_distance_matrix
    torch.manual_seed(0)
    model = AppearanceEncoder(6).eval()
    images = torch.randn(10, 3, 64, 32)
    with torch.no_grad():
        features = model(images)
        pooled = F.adaptive_max_pool2d(model.trunk(images), 1).flatten(1)
        p = F.normalize(model.primary.embedding(pooled), dim=1)
        f = F.normalize(model.fine.embedding(pooled), dim=1)
    score = p[:4] @ p[4:].t() + 0.5 * (f[:4] @ f[4:].t())  # 4 queries, 6 gallery images
    distance = compute_distance_matrix(features[:4], features[4:], 'euclidean')  # squared
    torch.testing.assert_close(distance, 3.0 - 2 * score, atol=1e-5, rtol=1e-5)
    assert torch.equal(distance.argsort(1), (-score).argsort(1))


def test_flip_merges_as_the_official_test_does():
    """Official ``test_2label.py``: per pass, each half normalised; the two passes summed;
    each half normalised again. Ours through the engine's flip path and the config."""
    from plugins.evaluation import protocol as evaluation
    from plugins.training.launch import setup_config
    torch.manual_seed(0)
    model = AppearanceEncoder(6).eval()
    images = torch.randn(5, 3, 64, 32)
    with torch.no_grad():
        ours = evaluation.flip_averaged(model, images, evaluation.flip_merge_of(model))
        halves = []
        for view in (images, images.flip(3)):
            pooled = F.adaptive_max_pool2d(model.trunk(view), 1).flatten(1)
            halves.append((F.normalize(model.primary.embedding(pooled), dim=1),
                           F.normalize(model.fine.embedding(pooled), dim=1)))
    p = F.normalize(halves[0][0] + halves[1][0], dim=1)
    f = F.normalize(halves[0][1] + halves[1][1], dim=1)
    torch.testing.assert_close(ours, torch.cat([p, 0.5 ** 0.5 * f], dim=1))
    from tests.helpers import REPO
    assert setup_config(os.path.join(REPO, 'configs', 'dgnet', 'dgnet_resnet50_market1501.yaml'),
                        []).test.flip
