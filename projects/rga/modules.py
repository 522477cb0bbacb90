"""The Relation-Aware Global Attention module (Zhang et al., CVPR 2020), computed exactly without relation matrices.

Paper Sec. 3. For a feature map with nodes (positions for RGA-S, channels for
RGA-C), the module embeds every node twice (theta, phi: 1x1 conv + BN + ReLU),
takes the pairwise affinities ``G = theta^T phi`` (eq. 1), stacks each node's
outgoing and incoming relations ``[G(i, :); G(:, i)]`` (eq. 2), embeds them
with a 1x1 conv (``gg``), concatenates a channel-pooled unary embedding
(``gx``, eq. 3) and turns the result into one sigmoid weight per node with a
shallow network (``W``, eq. 4).

Materialising G costs N x N per image (at 256x128: 2048 x 2048 after stage 1
for the spatial branch, the same for the channel branch after stage 4), and
the 1x1 conv reads 2N channels at N nodes. That conv is linear in G and
G is a product of two embeddings, so with ``W_gg = [W_in, W_out]``::

    conv(G_joint)[o, j] = sum_k W_in[o, k] G[j, k] + W_out[o, k] G[k, j]
                        = theta_j . (W_in phi^T)[o] + phi_j . (W_out theta^T)[o]

which :func:`relation_features` computes with three small matmuls. Parameters,
names and shapes are the official module's (``rga_modules.py``), so
:mod:`.reference` can run the official computation on the same weights.
"""
import torch
import torch.nn as nn


def _embedding(in_channels, out_channels):
    """1x1 conv (no bias) + BN + ReLU, the official embedding block."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU())


def _reduced(size, ratio):
    """``size // ratio``, at least 1.

    The official code only runs when every reduced width is positive (at 256x128
    all are); keeping one unit lets small inputs (tests, the embedded dataset)
    work and changes nothing where the official code runs.
    """
    return max(1, size // ratio)


def _attention_net(channels, down_ratio):
    """The shallow network W (paper eq. 4): conv, BN, ReLU, conv to one map, BN."""
    hidden = _reduced(channels, down_ratio)
    return nn.Sequential(nn.Conv2d(channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden),
                         nn.ReLU(), nn.Conv2d(hidden, 1, 1, bias=False), nn.BatchNorm2d(1))


def embed_nodes(x, blocks):
    """Apply several embedding blocks to node features ``x`` (B, F, nodes) in one matmul.

    Each block is ``Sequential(Conv2d 1x1, BN, ReLU)`` whose conv maps F to d;
    returns one (B, d, nodes) tensor per block. Equal to running each block on
    ``x`` laid out as (B, F, nodes, 1), reading ``x`` once.
    """
    weight = torch.cat([block[0].weight.flatten(1) for block in blocks])
    projected = torch.matmul(weight, x).unsqueeze(-1)
    chunks = projected.split([block[0].out_channels for block in blocks], dim=1)
    return [block[2](block[1](chunk)).squeeze(-1) for block, chunk in zip(blocks, chunks)]


def relation_features(theta, phi, weight):
    """The relation embedding's pre-BN output, without forming the relation matrix (exact).

    Args:
        theta, phi (Tensor): (B, d, n) node embeddings; ``G = theta^T phi`` is (n, n).
        weight (Tensor): (m, 2n, 1, 1) weight of the 1x1 conv that the official code
            runs over ``cat([G^T, G])`` laid on the nodes (incoming relations first).

    Returns:
        (B, m, n): ``out[o, j] = theta_j . (W_in phi^T)[o] + phi_j . (W_out theta^T)[o]``.
    """
    w_in, w_out = weight.flatten(1).chunk(2, dim=1)
    incoming = torch.matmul(w_in, phi.transpose(1, 2))
    outgoing = torch.matmul(w_out, theta.transpose(1, 2))
    return torch.matmul(incoming, theta) + torch.matmul(outgoing, phi)


class RGAModule(nn.Module):
    """RGA-S, RGA-C or RGA-SC on a (B, C, H, W) map of fixed size.

    Args:
        in_channel (int): C.
        in_spatial (int): H * W; the channel branch's embeddings read all positions,
            so the module is tied to one input size (as in the official code).
        use_spatial, use_channel (bool): the branches; with both, the **spatial branch
            runs first and the channel branch reads its re-weighted output**
            (official ``rga_modules.py``).
        cha_ratio, spa_ratio, down_ratio (int): embedding reductions (8, 8, 8 in the paper).
    """

    def __init__(self, in_channel, in_spatial, use_spatial=True, use_channel=True, cha_ratio=8,
                 spa_ratio=8, down_ratio=8):
        super().__init__()
        if not (use_spatial or use_channel):
            raise ValueError('RGAModule needs at least one of use_spatial, use_channel')
        self.in_channel = in_channel
        self.in_spatial = in_spatial
        self.use_spatial = use_spatial
        self.use_channel = use_channel
        self.inter_channel = _reduced(in_channel, cha_ratio)
        self.inter_spatial = _reduced(in_spatial, spa_ratio)
        if use_spatial:
            self.theta_spatial = _embedding(in_channel, self.inter_channel)
            self.phi_spatial = _embedding(in_channel, self.inter_channel)
        if use_channel:
            self.theta_channel = _embedding(in_spatial, self.inter_spatial)
            self.phi_channel = _embedding(in_spatial, self.inter_spatial)
        if use_spatial:
            self.gx_spatial = _embedding(in_channel, self.inter_channel)
        if use_channel:
            self.gx_channel = _embedding(in_spatial, self.inter_spatial)
        if use_spatial:
            self.gg_spatial = _embedding(2 * in_spatial, self.inter_spatial)
        if use_channel:
            self.gg_channel = _embedding(2 * in_channel, self.inter_channel)
        if use_spatial:
            self.W_spatial = _attention_net(1 + self.inter_spatial, down_ratio)
        if use_channel:
            self.W_channel = _attention_net(1 + self.inter_channel, down_ratio)

    @property
    def weights_read_directly(self):
        """Convs whose weights the factored forward uses without calling them (see plugins.export)."""
        names = []
        if self.use_spatial:
            names += ['theta_spatial.0', 'phi_spatial.0', 'gx_spatial.0', 'gg_spatial.0']
        if self.use_channel:
            names += ['theta_channel.0', 'phi_channel.0', 'gx_channel.0', 'gg_channel.0']
        return tuple(names)

    def spatial_attention(self, x):
        """(B, 1, H, W) weights in (0, 1): one per position (nodes = positions)."""
        b, _, h, w = x.shape
        theta, phi, unary = embed_nodes(x.flatten(2),
                                        [self.theta_spatial, self.phi_spatial, self.gx_spatial])
        relations = relation_features(theta, phi, self.gg_spatial[0].weight).view(b, -1, h, w)
        relations = self.gg_spatial[2](self.gg_spatial[1](relations))
        unary = unary.mean(1, keepdim=True).view(b, 1, h, w)
        return torch.sigmoid(self.W_spatial(torch.cat([unary, relations], 1)))

    def channel_attention(self, x):
        """(B, C, 1, 1) weights in (0, 1): one per channel (nodes = channels)."""
        b, c = x.shape[:2]
        theta, phi, unary = embed_nodes(x.flatten(2).transpose(1, 2),
                                        [self.theta_channel, self.phi_channel, self.gx_channel])
        relations = relation_features(theta, phi, self.gg_channel[0].weight).unsqueeze(-1)
        relations = self.gg_channel[2](self.gg_channel[1](relations))
        unary = unary.mean(1, keepdim=True).unsqueeze(-1)
        return torch.sigmoid(self.W_channel(torch.cat([unary, relations], 1))).view(b, c, 1, 1)

    def forward(self, x, return_attention=False):
        """Re-weighted map; with ``return_attention`` also ``{'spatial': ..., 'channel': ...}``."""
        if x.shape[1] != self.in_channel or x.shape[2] * x.shape[3] != self.in_spatial:
            raise ValueError('RGAModule built for {} channels x {} positions, got a {} map'.format(
                self.in_channel, self.in_spatial, tuple(x.shape[1:])))
        attention = {}
        if self.use_spatial:
            attention['spatial'] = self.spatial_attention(x)
            x = x * attention['spatial']
        if self.use_channel:
            attention['channel'] = self.channel_attention(x)
            x = x * attention['channel']
        return (x, attention) if return_attention else x
