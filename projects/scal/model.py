"""SCAL networks: ResNet-50 with five stacked attention agents, a BNNeck head, and the critic.

Chen, Lin, Ren, Lu, Zhou, "Self-Critical Attention Learning for Person
Re-Identification", ICCV 2019, Sec. 3. No official code exists; where the
paper gives only a formula, the choice made here is stated.

* Agents (Sec. 3.2): spatial ``A^s = sigmoid(W2 relu(W1 X_bar))`` with ``X_bar``
  the channel-averaged map, read as a vector over positions; channel
  ``A^c = sigmoid(W2 relu(W1 X_pool))`` with ``X_pool`` the globally pooled
  feature (SE-style). ``x <- x * A``. W1/W2 are bias-free linear maps with a
  reduction of 16 (Squeeze-and-Excitation's), at least 8 hidden units.
* Five agents, after ResNet-50's stem and each of its four stages (the layout of
  APNet, the first author's follow-up code).
* Head: BNNeck (Sec. 3.3: a BN before the classifier), bias-free classifier;
  triplet on the pooled feature, label-smoothed CE on the post-BN logits.
* Critic ``V = C(X, A; phi)`` (:class:`Critic`): X and all five attention maps,
  layer-normalised, through a two-layer MLP to one value per image. The paper's X
  is "the feature maps extracted by the basic network", from which the agent
  computes A (eqs. 1-3): here the pooled input of the last agent, so the critic
  sees the state and the attention apart (the attended feature would mix them).

Spatial agents are tied to the map sizes, so models are built for one input
size (``height``/``width`` from the config, 256x128 by default).
"""
import torch
import torch.nn as nn

from plugins import ReIDHead, ResNetTrunk, batchnorm_stats_frozen, model_builder

KINDS = ('spatial', 'channel')
REDUCTION, MIN_HIDDEN = 16, 8


def _squeeze_excite(dim):
    hidden = max(MIN_HIDDEN, dim // REDUCTION)
    return nn.Sequential(nn.Linear(dim, hidden, bias=False), nn.ReLU(),
                         nn.Linear(hidden, dim, bias=False), nn.Sigmoid())


class ChannelAgent(nn.Module):
    """``A^c = sigmoid(W2 relu(W1 X_pool))``: one weight per channel, (B, C)."""

    def __init__(self, channels):
        super().__init__()
        self.excite = _squeeze_excite(channels)

    def forward(self, x):
        return self.excite(x.mean((2, 3)))

    @staticmethod
    def reweight(x, attention):
        return x * attention[:, :, None, None]


class SpatialAgent(nn.Module):
    """``A^s = sigmoid(W2 relu(W1 X_bar))``: one weight per position, (B, H*W)."""

    def __init__(self, positions):
        super().__init__()
        self.excite = _squeeze_excite(positions)

    def forward(self, x):
        return self.excite(x.mean(1).flatten(1))

    @staticmethod
    def reweight(x, attention):
        return x * attention.view(x.shape[0], 1, x.shape[2], x.shape[3])


class SCALNet(nn.Module):
    """ResNet-50 (last stride 1) + five attention agents + BNNeck head.

    ``forward(x, return_featuremaps=False, return_attention=False, attention=True,
    with_reference=False)``: torchreid's contract (eval: pooled feature; training:
    logits or ``(logits, pooled feature)``); ``return_attention`` returns
    ``(output, attention maps, agent inputs)``: the five attention tensors and the
    five maps the agents read (their states; the critic's X is the last one,
    pooled: :func:`critic_state`); ``attention=False`` runs the same network with
    every agent's output replaced by 1 (the paper's "without attention"
    prediction behind the amelioration reward); ``with_reference`` appends that
    prediction to the ``return_attention`` tuple, computed from the shared stem.
    """

    def __init__(self, num_classes, loss='softmax', kind='channel', height=256, width=128,
                 last_stride=1, eval_feature='pooled', pretrained=False, pretrained_path=''):
        super().__init__()
        if kind not in KINDS:
            raise ValueError('Unknown SCAL attention kind {!r}; expected one of {}'.format(
                kind, list(KINDS)))
        self.kind = kind
        self.height, self.width = height, width
        self.trunk = ResNetTrunk('resnet50', last_stride=last_stride, pretrained=pretrained,
                                 pretrained_path=pretrained_path)
        channels = [self.trunk.stem[0].out_channels] + self.trunk.stage_channels
        sizes = self.trunk.output_sizes(height, width)
        self.agents = nn.ModuleList([
            ChannelAgent(c) if kind == 'channel' else SpatialAgent(h * w)
            for c, (h, w) in zip(channels, sizes)
        ])
        self.attention_dims = [c if kind == 'channel' else h * w for c, (h, w) in zip(channels, sizes)]
        self.head = ReIDHead(self.trunk.out_channels, num_classes, loss, bnneck=True,
                             classifier_bias=False, eval_feature=eval_feature)

    def check_input(self, x):
        if tuple(x.shape[-2:]) != (self.height, self.width):
            raise ValueError(
                'SCAL model was built for {}x{} inputs but got {}x{}; build it with height={}, '
                'width={} (data.height, data.width) or resize the images'.format(
                    self.height, self.width, x.shape[-2], x.shape[-1], x.shape[-2], x.shape[-1]))

    def _stages(self, x, attention):
        """From the stem's output: agent 1, then each stage followed by its agent.

        Returns (final map, attention maps, each agent's input map).
        """
        maps, states = [], []
        for k, agent in enumerate(self.agents):
            if k:
                x = self.trunk.stages[k - 1](x)
            states.append(x)
            if attention:
                a = agent(x)
                x = agent.reweight(x, a)
                maps.append(a)
        return x, maps, states

    def featuremaps(self, x, return_attention=False, attention=True):
        self.check_input(x)
        x, maps, _ = self._stages(self.trunk.stem(x), attention)
        return (x, maps) if return_attention else x

    def forward(self, x, return_featuremaps=False, return_attention=False, attention=True,
                with_reference=False):
        """``with_reference`` (with ``return_attention``) appends the no-attention output.

        That reference (the amelioration reward's, eq. 5) shares the stem, which
        precedes the first agent, and runs the rest without gradient and with
        batch statistics that do not update BN running estimates.
        """
        if with_reference and (not return_attention or return_featuremaps):
            raise ValueError('with_reference=True needs return_attention=True and '
                             'return_featuremaps=False (the reference is the head output)')
        self.check_input(x)
        stem = self.trunk.stem(x)
        maps, att, states = self._stages(stem, attention)
        out = maps if return_featuremaps else self.head(maps)
        if not return_attention:
            return out
        result = (out, att, states)
        if with_reference:
            with torch.no_grad(), batchnorm_stats_frozen(self):
                result += (self.head(self._stages(stem, attention=False)[0]),)
        return result


def critic_state(agent_inputs):
    """The critic's X: the last agent's input map, globally average-pooled (2,048-d)."""
    return agent_inputs[-1].mean((2, 3))


class Critic(nn.Module):
    """``V = C(X, A; phi)``: the image's value under its attention (paper Sec. 3.1, eq. 3).

    Reads X (the pooled map the last agent reads) and the five attention tensors (flattened,
    concatenated, layer-normalised so that both scales count) and returns one
    value per image through Linear-ReLU-Linear. The paper does not give the
    critic's architecture; this is our choice.
    """

    def __init__(self, feature_dim, attention_dims, hidden=256):
        super().__init__()
        dim = feature_dim + sum(attention_dims)
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.ReLU(),
                                 nn.Linear(hidden, 1))

    def forward(self, features, *attention):
        return self.net(torch.cat([features.flatten(1)] + [a.flatten(1) for a in attention], 1)).view(-1)


def scal_attention_maps(model, images):
    """``{'agentK': (N, h, w)}``: spatial weights as they are; channel weights as the energy of the re-weighted map."""
    model.eval()
    x = images
    maps = {}
    for k, (block, agent) in enumerate(zip([model.trunk.stem, *model.trunk.stages], model.agents), 1):
        x = block(x)
        a = agent(x)
        x = agent.reweight(x, a)
        maps['agent{}_{}'.format(k, model.kind)] = (
            a.view(x.shape[0], x.shape[2], x.shape[3]) if model.kind == 'spatial' else x.abs().sum(1))
    return maps


scal_spatial_resnet50 = model_builder(SCALNet, 'scal_spatial_resnet50', kind='spatial')
scal_channel_resnet50 = model_builder(SCALNet, 'scal_channel_resnet50', kind='channel')
