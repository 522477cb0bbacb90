"""DG-Net's four networks (Zheng et al., CVPR 2019, "Joint Discriminative and Generative
Learning for Person Re-identification"), architecture and initialisation of the official
NVlabs/DG-Net code (``reIDmodel.py``: ``ft_netAB``, ``ClassBlock``; ``networks.py``:
``AdaINGen``, ``MsImageDis``) with its ``configs/latest.yaml`` settings.

* :class:`AppearanceEncoder` (E_a, the ReID model, ``ft_netAB``): ResNet-50 with last
  stride 1, global max pooling to 2048-d, two :class:`ClassBlock` heads (primary,
  dropout 0.5; fine-grained, dropout 0.75). Its appearance code is layer4 max-pooled
  into 4 horizontal parts (8192-d), detached: E_a learns only through its identity
  losses, never through the generator. 26,378,782 parameters with 751 classes (the
  official 28,427,782 less torchvision's unused 1000-way fc, 2,049,000).
* :class:`StructureEncoder` (E_s, ``ContentEncoder``): grey image -> 128 x H/4 x W/4
  structure code through convolutions, 4 residual blocks and :class:`ASPP`
  (instance norm, leaky ReLU, reflection padding). 380,544 parameters.
* :class:`Decoder` (G, ``Decoder``): 4 AdaIN residual blocks, two upsampling stages
  with :class:`LayerNorm`, RGB output without tanh. 1,455,555 parameters. Its AdaIN
  scales and shifts come from :class:`AdaINParameterMLPs` (``mlp_w1..4``,
  ``mlp_b1..4``, 11,544,576 parameters) and are passed to the blocks as arguments
  instead of being written into module attributes as the official code does, so a
  forward pass keeps no per-batch state (export, re-entrancy).
  :class:`Generator` (``AdaINGen``) holds E_s, the MLPs and G: 13,380,675 parameters.
* :class:`MultiScaleDiscriminator` (D, ``MsImageDis``): the same patch network at
  3 scales (average pooling between them), no normalisation. 1,025,571 parameters.
  LSGAN losses and the R1 penalty of the official ``calc_dis_loss``/``calc_gen_loss``:
  :func:`discriminator_loss`, :func:`generator_adversarial_loss`, :func:`r1_penalty`.

Input sizes: E_s pads the last ASPP convolution by 9 pixels with reflection, which
needs a structure code of at least 10 x 10, i.e. images of at least 37 x 37 (the
official code has the same limit); G returns 4x the code's size, so images whose
sides are multiples of 4 come back at their own size (256x128 -> 64x32 code).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from plugins import ResNetTrunk, fp32, model_builder

__all__ = ['dgnet_resnet50', 'AppearanceEncoder', 'ClassBlock', 'StructureEncoder', 'ASPP', 'Decoder',
           'AdaINParameterMLPs', 'AdaINResidualBlock', 'Generator', 'MultiScaleDiscriminator',
           'LayerNorm', 'UpsampledConv2d', 'adaptive_instance_norm', 'upsampled_conv2d',
           'discriminator_loss', 'generator_adversarial_loss', 'r1_penalty']

LEAKY_SLOPE = 0.2  # the official 'lrelu' activation
NUM_PARTS = 4  # horizontal parts of the appearance code (ft_netAB.part)
FEATURE_DIM = 2048  # ResNet-50 layer4 channels
APPEARANCE_DIM = NUM_PARTS * FEATURE_DIM
STRUCTURE_CHANNELS = 128
ASPP_DILATIONS = (3, 6, 9)


def conv_layers(in_channels, out_channels, kernel_size, stride=1, dilation=1, norm=None,
                activation=True, upsample=False):
    """Layers of the official ``Conv2dBlock`` with ``pad_type='reflect'``.

    Reflection padding keeping the size (before striding), a biased convolution (the
    official block keeps the bias even before a normalisation), then ``norm`` (a module
    or None) and a leaky ReLU in place, as there: neither the convolution nor a
    normalisation keeps its output for the backward, so the activation's saved output
    is the only copy (the next 1x1 convolution's saved input shares it). ``upsample``:
    the official nearest x2 upsampling in front, padding and convolution computed
    together by :class:`UpsampledConv2d`.
    """
    if upsample:
        layers = [UpsampledConv2d(in_channels, out_channels, kernel_size)]
    else:
        padding = dilation * (kernel_size - 1) // 2
        layers = [nn.ReflectionPad2d(padding)] if padding else []
        layers.append(nn.Conv2d(in_channels, out_channels, kernel_size, stride, dilation=dilation))
    if norm is not None:
        layers.append(norm)
    if activation:
        layers.append(nn.LeakyReLU(LEAKY_SLOPE, inplace=True))
    return layers


def _phase_taps(kernel_size, like):
    """``(2, 2 r + 1, k)`` 0/1 tensor: which of the ``k`` taps (along one axis) of a kernel
    applied to a nearest x2 upsampled map fall on low-resolution offset ``t - r``, for
    even (phase 0) and odd (phase 1) output positions; ``r = ceil(p / 2)``, ``p = k // 2``.
    Output ``2m + phase`` tap ``a`` reads upsampled ``2m + phase + a - p``, i.e. low-resolution
    ``m + (phase + a - p) // 2``. Built on ``like``'s device (no host copy)."""
    p = kernel_size // 2
    reach = (p + 1) // 2
    phase, offset, tap = (torch.arange(n, device=like.device) for n in (2, 2 * reach + 1, kernel_size))
    lands = (phase[:, None, None] + tap - p).div(2, rounding_mode='floor') + reach
    return (lands == offset[:, None]).to(like.dtype)


def _reflected(size, p, device):
    """Low-resolution rows (or columns) that the upsampled map's reflection padding of ``p``
    repeats: the ``p`` before it (upsampled rows ``p .. 1``), then the ``p`` after it
    (upsampled rows ``2 size - 2 .. 2 size - 1 - p``)."""
    j = torch.arange(p, device=device)
    return torch.cat([(p - j).div(2, rounding_mode='floor'),
                      (2 * size - 2 - j).div(2, rounding_mode='floor')])


def _outer(size, p, device):
    """The first and the last ``p`` of ``size`` positions."""
    j = torch.arange(p, device=device)
    return torch.cat([j, size - p + j])


def _check_kernel_size(height, width):
    """The kernels :func:`upsampled_conv2d` computes: square, odd (a centred reflection), >= 3."""
    if height != width or height % 2 == 0 or height < 3:
        raise ValueError('an upsampled convolution needs a square kernel of odd size at least 3, '
                         'got {}x{}'.format(height, width))


def upsampled_conv2d(x, weight, bias):
    """``conv2d(reflect_pad(nearest_upsample_x2(x), k // 2), weight, bias)``: the official
    ``Upsample`` + ``Conv2dBlock`` (reflection padding, stride 1, odd ``k``) without building
    the upsampled map.

    Output ``(2m + i, 2n + j)`` reads low-resolution pixels ``m - r .. m + r`` (rows) and
    ``n - r .. n + r`` (columns), each through the sum of the taps that fall on it
    (:func:`_phase_taps`). The four phases' summed kernels interleave into one
    ``2 (2r + 1)``-tap kernel of a stride-2 transposed convolution of ``x``: at ``k = 5``,
    36 multiplies per low-resolution pixel instead of 4 x 25, and the backward keeps ``x``
    instead of the 4x larger upsampled and padded maps. The transposed convolution sees
    zeros around ``x`` where the official map has reflected rows: with ``A`` the official
    padded upsampling along an axis and ``Z`` the zero-padded one, ``A_r A_c = Z_r Z_c +
    (A_r - Z_r) A_c + Z_r (A_c - Z_c)``, and the last two terms, non-zero only in the ``p``
    padding rows (columns), reach the outer ``p`` output rows (columns) through the
    kernel's outer taps; they are added there.
    """
    out_channels, in_channels, k, k_width = weight.shape
    _check_kernel_size(k, k_width)
    p = k // 2
    height, width = x.shape[-2:]
    if p >= 2 * min(height, width):
        raise ValueError('an upsampled {0}x{0} convolution reflects {1} rows and columns of the '
                         'upsampled map, which needs more than {1}: got a {2}x{3} input'.format(
                             k, p, height, width))
    with fp32(x.device.type):  # sums of weights, in the weights' precision
        taps = _phase_taps(k, weight)
        phases = torch.einsum('iak,jbl,oukl->ouaibj', taps, taps, weight)
    size = 2 * taps.shape[1]  # offsets last to first, phases inside: transposed-convolution order
    kernel = phases.flip(2, 4).reshape(out_channels, in_channels, size, size).transpose(0, 1)
    y = F.conv_transpose2d(x, kernel, bias, stride=2, padding=size // 2 - 1)

    rows = F.interpolate(x.index_select(2, _reflected(height, p, x.device)), scale_factor=(1, 2))
    rows = F.pad(rows, (p, p, 0, 0), mode='reflect')  # (A_r - Z_r) A_c
    top = F.conv2d(F.pad(rows[..., :p, :], (0, 0, 0, p - 1)), weight[:, :, :p])
    bottom = F.conv2d(F.pad(rows[..., p:, :], (0, 0, p - 1, 0)), weight[:, :, p + 1:])
    cols = F.interpolate(x.index_select(3, _reflected(width, p, x.device)), scale_factor=(2, 1))
    # Z_r (A_c - Z_c): the rows' zero padding is the convolution's
    left = F.conv2d(F.pad(cols[..., :p], (0, p - 1)), weight[..., :p], padding=(p, 0))
    right = F.conv2d(F.pad(cols[..., p:], (p - 1, 0)), weight[..., p + 1:], padding=(p, 0))
    # index_add_, not += on slices: its backward reads only the outer rows of the gradient,
    # where a slice's copies the whole gradient (the layer's step measured 20% slower)
    y.index_add_(2, _outer(2 * height, p, x.device), torch.cat([top, bottom], dim=2))
    return y.index_add_(3, _outer(2 * width, p, x.device), torch.cat([left, right], dim=3))


class UpsampledConv2d(nn.Conv2d):
    """Nearest x2 upsampling, reflection padding of ``k // 2`` and a ``k x k`` convolution
    (odd ``k``): the official ``nn.Upsample(scale_factor=2)`` + ``Conv2dBlock``, same
    parameters, computed by :func:`upsampled_conv2d`."""

    def __init__(self, in_channels, out_channels, kernel_size):
        _check_kernel_size(kernel_size, kernel_size)
        super().__init__(in_channels, out_channels, kernel_size)

    def forward(self, x):
        return upsampled_conv2d(x, self.weight, self.bias)


def _kaiming_init(module):
    """Official generator init (``weights_init('kaiming')``): He-normal fan-in weights, zero bias."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, a=0, mode='fan_in')
            nn.init.zeros_(m.bias)


def _gaussian_init(module):
    """Official discriminator init (``weights_init('gaussian')``): N(0, 0.02) weights, zero bias."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0.0, 0.02)
            nn.init.zeros_(m.bias)


class ResidualBlock(nn.Module):
    """conv-[IN]-lrelu-conv-[IN] plus identity: the official ``ResBlock`` (E_s with
    instance norm, D without normalisation)."""

    def __init__(self, channels, instance_norm):
        super().__init__()

        def norm():
            return nn.InstanceNorm2d(channels) if instance_norm else None

        self.body = nn.Sequential(
            *conv_layers(channels, channels, 3, norm=norm()),
            *conv_layers(channels, channels, 3, norm=norm(), activation=False))

    def forward(self, x):
        return x + self.body(x)


# ----------------------------------------------------------------------------------------
# E_a: appearance encoder / ReID model
# ----------------------------------------------------------------------------------------

class ClassBlock(nn.Module):
    """Linear -> BatchNorm1d (the 512-d embedding) -> Dropout -> Linear classifier.

    Initialisation of the official ``ClassBlock``: He-normal (fan-out) first Linear with
    zero bias, classifier N(0, 0.001) with zero bias. The official ``weights_init_kaiming``
    only re-initialises ``InstanceNorm1d`` layers, so the BatchNorm keeps PyTorch's
    default (weight 1, bias 0).
    """

    def __init__(self, in_dim, num_classes, dropout, bottleneck_dim=512):
        super().__init__()
        self.embedding = nn.Sequential(nn.Linear(in_dim, bottleneck_dim),
                                       nn.BatchNorm1d(bottleneck_dim))
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(bottleneck_dim, num_classes)
        nn.init.kaiming_normal_(self.embedding[0].weight, a=0, mode='fan_out')
        nn.init.zeros_(self.embedding[0].bias)
        nn.init.normal_(self.classifier.weight, std=0.001)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, x):
        return self.classifier(self.dropout(self.embedding(x)))


class AppearanceEncoder(nn.Module):
    """E_a: the official ``ft_netAB`` (``ID_style: AB``, ``ID_stride: 1``, ``pool: max``).

    Training mode: ``forward`` returns ``(logits_primary, logits_fine)``; :meth:`encode`
    also returns the appearance code. Eval mode: ``forward`` returns the retrieval
    feature, an ``(N, 1024)`` tensor for torchreid's evaluation: the L2-normalised
    primary embedding ``p`` concatenated with the L2-normalised fine-grained one ``f``
    scaled by ``sqrt(fine_weight)``. The official test extracts the same two normalised
    embeddings (``reid_eval/test_2label.py``; Linear-BN, dropout is the identity in
    eval) and scores a gallery image by ``p_q.p_g + 0.5 f_q.f_g``
    (``reid_eval/evaluate_gpu.py`` multiplies the query's fine half by 0.5). Here
    the dot product of two features is ``p_q.p_g + fine_weight f_q.f_g``, and every
    feature has the norm ``sqrt(1 + fine_weight)``, so torchreid's Euclidean or
    cosine ranking is the official ranking. The official flip (``test.flip``, on in
    the paper configs) is :meth:`merge_flipped_features`.

    Args:
        num_classes (int): training identities.
        loss (str): only 'softmax' (both heads are identity classifiers); present for
            torchreid's builder signature.
        fine_weight (float): weight of the fine-grained similarity in the score (the
            official 0.5).
        last_stride (int): stride of layer4 (1, as the official ``ID_stride``).
        pretrained (bool), pretrained_path (str): ImageNet ResNet-50 from a local file.
    """

    def __init__(self, num_classes, loss='softmax', fine_weight=0.5, last_stride=1, pretrained=False,
                 pretrained_path=''):
        super().__init__()
        if loss != 'softmax':
            raise ValueError("DG-Net's appearance encoder trains with identity losses only "
                             "(loss='softmax'), got loss={!r}".format(loss))
        self.fine_scale = math.sqrt(fine_weight)
        self.trunk = ResNetTrunk('resnet50', last_stride=last_stride, pretrained=pretrained,
                                 pretrained_path=pretrained_path)
        self.primary = ClassBlock(FEATURE_DIM, num_classes, dropout=0.5)
        self.fine = ClassBlock(FEATURE_DIM, num_classes, dropout=0.75)

    def encode(self, images):
        """``(appearance code, (logits_primary, logits_fine))`` from one trunk pass.

        The code is layer4 max-pooled into 4 horizontal parts and flattened channel-major
        like the official ``f.view(N, 2048 * 4)``: entry ``4 * c + p`` is channel ``c`` of
        part ``p``. It is detached, as in the official model ("no gradient"): the
        generator's losses do not reach E_a through it.
        """
        return self.read(self.trunk(images))

    def read(self, feature_map):
        """:meth:`encode` after the trunk: ``(code, (logits_primary, logits_fine))`` of layer4's
        ``feature_map``."""
        code = F.adaptive_max_pool2d(feature_map, (NUM_PARTS, 1)).flatten(1).detach()
        pooled = F.adaptive_max_pool2d(feature_map, 1).flatten(1)
        return code, (self.primary(pooled), self.fine(pooled))

    def retrieval_feature(self, images):
        """``[p, sqrt(fine_weight) f]``: the normalised primary and fine-grained embeddings."""
        pooled = F.adaptive_max_pool2d(self.trunk(images), 1).flatten(1)
        return torch.cat([F.normalize(self.primary.embedding(pooled), dim=1),
                          self.fine_scale * F.normalize(self.fine.embedding(pooled), dim=1)], dim=1)

    def merge_flipped_features(self, features, mirrored):
        """``test.flip`` as the official evaluation computes it: each half (primary, fine) of
        the image's and its mirror's features summed, then normalised again."""
        primary, fine = (features + mirrored).split(self.primary.embedding[1].num_features, dim=1)
        return torch.cat([F.normalize(primary, dim=1),
                          self.fine_scale * F.normalize(fine, dim=1)], dim=1)

    def forward(self, images):
        if self.training:
            return self.encode(images)[1]
        return self.retrieval_feature(images)


# ----------------------------------------------------------------------------------------
# E_s: structure encoder
# ----------------------------------------------------------------------------------------

class ASPP(nn.Module):
    """Atrous spatial pyramid of the official structure encoder: a 1x1 branch and three
    1x1 -> dilated 3x3 branches (dilations 3, 6, 9), ``channels // 2`` each, fused by a
    1x1 convolution to ``2 * channels``; every convolution is instance-normalised, only
    the inner 1x1 convolutions are followed by a leaky ReLU (official ``ASPP``)."""

    def __init__(self, channels, dilations=ASPP_DILATIONS):
        super().__init__()
        branch = channels // 2
        self.pointwise = nn.Sequential(
            *conv_layers(channels, branch, 1, norm=nn.InstanceNorm2d(branch), activation=False))
        self.atrous = nn.ModuleList(
            nn.Sequential(
                *conv_layers(channels, branch, 1, norm=nn.InstanceNorm2d(branch)),
                *conv_layers(branch, branch, 3, dilation=d, norm=nn.InstanceNorm2d(branch),
                             activation=False))
            for d in dilations)
        fused = branch * (1 + len(dilations))
        self.fuse = nn.Sequential(
            *conv_layers(fused, 2 * channels, 1, norm=nn.InstanceNorm2d(2 * channels),
                         activation=False))

    def forward(self, x):
        branches = [self.pointwise(x)] + [branch(x) for branch in self.atrous]
        return self.fuse(torch.cat(branches, dim=1))


class StructureEncoder(nn.Module):
    """E_s: the official ``ContentEncoder`` (``dim 16``, ``n_downsample 2``, ``n_res 4``,
    ``norm in``, ``activ lrelu``, ``pad_type reflect``, no tanh).

    ``forward`` takes the normalised RGB batch and converts it to grey inside (channel
    mean, the official ``to_gray``), so the structure code keeps pose and background but
    not colour; a 1-channel batch is taken as already grey. A 256x128 image gives a
    128 x 64 x 32 code.
    """

    min_code_size = max(ASPP_DILATIONS) + 1  # reflection padding must be smaller than the map

    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(
            *conv_layers(1, 16, 3, stride=2, norm=nn.InstanceNorm2d(16)),
            *conv_layers(16, 32, 3, norm=nn.InstanceNorm2d(32)),
            *conv_layers(32, 32, 3, norm=nn.InstanceNorm2d(32)),
            *conv_layers(32, 64, 3, stride=2, norm=nn.InstanceNorm2d(64)),
            *[ResidualBlock(64, instance_norm=True) for _ in range(4)],
            ASPP(64))
        self.out_channels = STRUCTURE_CHANNELS
        _kaiming_init(self)

    @staticmethod
    def to_grey(images):
        """Channel mean of an RGB batch (official ``to_gray``); 1-channel batches pass as they are."""
        if images.shape[1] == 1:
            return images
        if images.shape[1] != 3:
            raise ValueError('StructureEncoder expects RGB or grey images, got {} channels'.format(
                images.shape[1]))
        return images.mean(dim=1, keepdim=True)

    def forward(self, images):
        code_size = [(n - 1) // 4 + 1 for n in images.shape[-2:]]  # two stride-2 convolutions
        if min(code_size) < self.min_code_size:
            raise ValueError(
                'StructureEncoder needs images of at least {0}x{0} (a {1}x{1} code for the '
                'dilation-{2} ASPP branch), got {3}x{4}'.format(
                    4 * self.min_code_size - 3, self.min_code_size, max(ASPP_DILATIONS),
                    *images.shape[-2:]))
        return self.layers(self.to_grey(images))


# ----------------------------------------------------------------------------------------
# G: decoder with functional AdaIN
# ----------------------------------------------------------------------------------------

def adaptive_instance_norm(x, weight, bias, eps=1e-5):
    """Instance-normalise each (sample, channel) map, then scale and shift it per sample.

    ``weight``, ``bias``: ``(N, C)``. The official ``AdaptiveInstanceNorm2d``: batch norm
    in training mode over the ``(1, N*C, H, W)`` view (biased variance), its affine
    taking the per-sample parameters, which are passed here instead of assigned to the
    module. One operation, so its backward keeps only the input and the statistics.
    """
    n, c = x.shape[:2]
    return F.batch_norm(x.reshape(1, n * c, *x.shape[2:]), None, None, weight.reshape(-1),
                        bias.reshape(-1), training=True, eps=eps).view_as(x)


class LayerNorm(nn.Module):
    """The official ``LayerNorm``: per-sample mean and (unbiased) standard deviation over
    C, H, W, ``(x - mean) / (std + eps)``, then a per-channel affine whose scale starts
    U(0, 1). Not ``nn.LayerNorm``/``nn.GroupNorm``: those divide by ``sqrt(var + eps)``
    with the biased variance.

    Computed as one pass over the map, ``x * s + t`` with the per-(sample, channel)
    ``s = gamma / (std + eps)`` and ``t = beta - mean * s``: the same function, whose
    backward keeps only ``x`` (the official steps keep ``x - mean`` and the normalised map).
    """

    def __init__(self, num_features, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.gamma = nn.Parameter(torch.empty(num_features).uniform_())
        self.beta = nn.Parameter(torch.zeros(num_features))

    def forward(self, x):
        flat = x.flatten(1)
        per_sample = (-1, 1)
        scale = self.gamma / (flat.std(1).view(per_sample) + self.eps)
        shift = self.beta - flat.mean(1).view(per_sample) * scale
        trailing = (1,) * (x.dim() - 2)
        return torch.addcmul(shift.view(*shift.shape, *trailing), x, scale.view(*scale.shape, *trailing))


class AdaINResidualBlock(nn.Module):
    """conv-AdaIN-lrelu-conv-AdaIN plus identity (official ``ResBlock`` with ``norm='adain'``).

    ``forward`` takes the block's AdaIN scales and shifts, ``(N, 2 * channels)`` each:
    the first ``channels`` columns for the first convolution, the rest for the second,
    the order in which the official ``assign_adain_params`` hands them out.
    """

    def __init__(self, channels):
        super().__init__()
        self.conv1 = nn.Sequential(*conv_layers(channels, channels, 3, activation=False))
        self.conv2 = nn.Sequential(*conv_layers(channels, channels, 3, activation=False))
        self.adain_channels = 2 * channels

    def forward(self, x, weight, bias):
        (w1, w2), (b1, b2) = weight.chunk(2, dim=1), bias.chunk(2, dim=1)
        h = F.leaky_relu(adaptive_instance_norm(self.conv1(x), w1, b1), LEAKY_SLOPE, inplace=True)
        return x + adaptive_instance_norm(self.conv2(h), w2, b2)


# ``to_image`` indices of the layers with parameters when the upsampling, padding and
# convolution were separate modules (checkpoints written before :class:`UpsampledConv2d`)
SEPARATE_UPSAMPLING_INDICES = {2: 0, 3: 1, 7: 3, 8: 4, 11: 7, 14: 10, 16: 12}


def _rename_separate_upsampling(module, state_dict, prefix, *args):
    """Load-state-dict pre-hook of :class:`Decoder`: a checkpoint with the earlier layer
    indices (``to_image.16`` exists only there) gets the current ones; same parameters, same
    order, so optimiser states still match."""
    head = prefix + 'to_image.'
    if head + '16.weight' not in state_dict:
        return
    old = [key for key in state_dict if key.startswith(head)]
    tensors = {key: state_dict.pop(key) for key in old}
    for key, tensor in tensors.items():
        index, rest = key[len(head):].split('.', 1)
        state_dict['{}{}.{}'.format(head, SEPARATE_UPSAMPLING_INDICES[int(index)], rest)] = tensor


class Decoder(nn.Module):
    """G: the official ``Decoder`` (``n_res 4``, ``n_upsample 2``, ``dec basic``, no tanh,
    ``dropout 0``: the official zero-rate dropout layer is left out).

    4 AdaIN residual blocks at 128 channels; twice nearest x2 upsampling + 5x5 conv +
    :class:`LayerNorm` + lrelu (128 -> 64 -> 32; the upsampling and convolution together
    by :class:`UpsampledConv2d`); two 3x3 convs at 32 channels with lrelu and no norm; a
    1x1 conv to RGB. ``forward(structure, adain_weight, adain_bias)``
    takes the ``(N, adain_channels)`` AdaIN parameters of :class:`AdaINParameterMLPs`;
    block ``k`` reads columns ``[256 k, 256 (k + 1))``, i.e. the output of MLP ``k``.
    """

    def __init__(self, channels=STRUCTURE_CHANNELS, num_blocks=4):
        super().__init__()
        self.blocks = nn.ModuleList(AdaINResidualBlock(channels) for _ in range(num_blocks))
        self.adain_channels = sum(block.adain_channels for block in self.blocks)
        half, quarter = channels // 2, channels // 4
        self.to_image = nn.Sequential(
            *conv_layers(channels, half, 5, norm=LayerNorm(half), upsample=True),
            *conv_layers(half, quarter, 5, norm=LayerNorm(quarter), upsample=True),
            *conv_layers(quarter, quarter, 3),
            *conv_layers(quarter, quarter, 3),
            *conv_layers(quarter, 3, 1, activation=False))
        _kaiming_init(self)
        self.register_load_state_dict_pre_hook(_rename_separate_upsampling)

    def forward(self, structure, adain_weight, adain_bias):
        for params in (adain_weight, adain_bias):
            if params.shape[1] != self.adain_channels:
                raise ValueError('Decoder consumes {} AdaIN parameters per sample, got {}'.format(
                    self.adain_channels, params.shape[1]))
        sizes = [block.adain_channels for block in self.blocks]
        x = structure
        for block, weight, bias in zip(self.blocks, adain_weight.split(sizes, dim=1),
                                       adain_bias.split(sizes, dim=1)):
            x = block(x, weight, bias)
        return self.to_image(x)


def _mlp(in_dim, hidden_dim, out_dim):
    """The official ``MLP`` with ``n_blk 3``, ``mlp_norm none``, ``activ lrelu``, linear output."""
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.LeakyReLU(LEAKY_SLOPE),
                         nn.Linear(hidden_dim, hidden_dim), nn.LeakyReLU(LEAKY_SLOPE),
                         nn.Linear(hidden_dim, out_dim))


class AdaINParameterMLPs(nn.Module):
    """Appearance code -> AdaIN scales and shifts: the official ``mlp_w1..4``/``mlp_b1..4``.

    The 8192-d code is cut into 4 consecutive 2048-d chunks (official ``ID[:, :2048]``
    ...); MLP ``k`` (2048 -> 512 -> 512 -> 256) reads chunk ``k`` and produces the
    scales (``weight_mlps``) or shifts (``bias_mlps``) of the decoder's residual block
    ``k``. Because the code is flattened channel-major, chunk ``k`` holds channels
    ``512 k .. 512 k + 511`` of all four horizontal parts, not part ``k``.
    """

    def __init__(self, code_dim=APPEARANCE_DIM, num_chunks=4, out_dim=2 * STRUCTURE_CHANNELS,
                 hidden_dim=512):
        super().__init__()
        self.num_chunks = num_chunks
        self.weight_mlps = nn.ModuleList(_mlp(code_dim // num_chunks, hidden_dim, out_dim)
                                         for _ in range(num_chunks))
        self.bias_mlps = nn.ModuleList(_mlp(code_dim // num_chunks, hidden_dim, out_dim)
                                       for _ in range(num_chunks))
        self.out_channels = num_chunks * out_dim
        _kaiming_init(self)

    def forward(self, code):
        """``(adain_weight, adain_bias)``, ``(N, out_channels)`` each, from an ``(N, 8192)``
        or ``(N, 2048, 4, 1)`` code."""
        chunks = code.flatten(1).chunk(self.num_chunks, dim=1)
        weight = torch.cat([mlp(c) for mlp, c in zip(self.weight_mlps, chunks)], dim=1)
        bias = torch.cat([mlp(c) for mlp, c in zip(self.bias_mlps, chunks)], dim=1)
        return weight, bias


class Generator(nn.Module):
    """E_s, the AdaIN MLPs and G together: the official ``AdaINGen``, whose parameters
    one optimiser updates (13,380,675 parameters)."""

    def __init__(self):
        super().__init__()
        self.structure_encoder = StructureEncoder()
        self.adain_mlps = AdaINParameterMLPs()
        self.decoder = Decoder()

    def encode(self, images):
        """Structure code of an RGB (or grey) batch."""
        return self.structure_encoder(images)

    def decode(self, structure, appearance):
        """Image with ``structure``'s pose/background and ``appearance``'s clothing."""
        return self.decoder(structure, *self.adain_mlps(appearance))

    def forward(self, images, appearance):
        return self.decode(self.encode(images), appearance)


# ----------------------------------------------------------------------------------------
# D: multi-scale discriminator and its losses
# ----------------------------------------------------------------------------------------

class MultiScaleDiscriminator(nn.Module):
    """D: the official ``MsImageDis`` (``dim 32``, ``n_layer 2``, ``n_res 4``,
    ``num_scales 3``, ``norm none``, ``activ lrelu``, ``pad_type reflect``, Gaussian init).

    Per scale: 1x1 conv 3->32, 3x3, 3x3 stride 2, 3x3, 3x3 stride 2 32->64, 4 residual
    blocks at 64 channels, 1x1 conv to one LSGAN score per patch. The input is average
    pooled (3x3, stride 2, padding 1, ``count_include_pad=False``) between scales.
    ``forward`` returns the list of patch maps (64x32, 32x16, 16x8 at 256x128).
    """

    def __init__(self, in_channels=3, channels=32, num_scales=3, num_blocks=4):
        super().__init__()
        self.scales = nn.ModuleList(self._scale_network(in_channels, channels, num_blocks)
                                    for _ in range(num_scales))
        self.downsample = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)
        _gaussian_init(self)

    @staticmethod
    def _scale_network(in_channels, channels, num_blocks):
        wide = 2 * channels
        return nn.Sequential(
            *conv_layers(in_channels, channels, 1),
            *conv_layers(channels, channels, 3),
            *conv_layers(channels, channels, 3, stride=2),
            *conv_layers(channels, channels, 3),
            *conv_layers(channels, wide, 3, stride=2),
            *[ResidualBlock(wide, instance_norm=False) for _ in range(num_blocks)],
            nn.Conv2d(wide, 1, 1))

    def forward(self, images):
        outputs = []
        for index, network in enumerate(self.scales):
            if index:
                images = self.downsample(images)
            outputs.append(network(images))
        return outputs


def discriminator_loss(fake_outputs, real_outputs):
    """LSGAN loss of D summed over scales: ``mean(D(fake)^2) + mean((D(real) - 1)^2)``
    (official ``calc_dis_loss`` without its R1 term, see :func:`r1_penalty`)."""
    return sum(fake.pow(2).mean() + (real - 1).pow(2).mean()
               for fake, real in zip(fake_outputs, real_outputs))


def generator_adversarial_loss(fake_outputs):
    """LSGAN loss of the generator summed over scales: ``2 * mean((D(fake) - 1)^2)``
    (official ``calc_gen_loss``, including its factor 2)."""
    return sum(2 * (fake - 1).pow(2).mean() for fake in fake_outputs)


def r1_penalty(real_outputs, real_images):
    """R1 gradient penalty of the official ``calc_dis_loss``, unweighted.

    For every scale, the gradient of ``D_s(real).sum()`` with respect to the real
    images, squared and summed per sample, averaged over the batch; summed over scales.
    The official loss adds ``LAMBDA`` (0.01) times this. ``real_images`` must require
    grad before D runs on them; the graph is kept so the penalty can be backpropagated.
    """
    if not real_images.requires_grad:
        raise ValueError('r1_penalty needs the gradient with respect to the real images: '
                         'call real_images.requires_grad_() before running D on them')
    penalty = 0
    for output in real_outputs:
        grad, = torch.autograd.grad(output.sum(), real_images, create_graph=True)
        penalty = penalty + grad.pow(2).flatten(1).sum(1).mean()
    return penalty


dgnet_resnet50 = model_builder(AppearanceEncoder, 'dgnet_resnet50')
