"""MACs counted over everything that runs, against hand counts and the host's layer hooks."""
import torch
import torch.nn as nn
from torchreid.reid.utils import compute_model_complexity

from plugins.nn.flops import count_macs


class ConvMatmulLinear(nn.Module):
    """A 3x3 convolution, a matrix product of its own output (no layer), a linear classifier."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.fc = nn.Linear(64, 10, bias=False)

    def forward(self, x):
        x = self.conv(x).flatten(2)  # (1, 4, 64)
        x = torch.bmm(x, x.transpose(1, 2)) @ x  # (1, 4, 4), then (1, 4, 64)
        return self.fc(x.mean(1))


def test_counts_convolutions_matrix_products_and_linear_layers_by_hand():
    model = ConvMatmulLinear().train()
    conv = 8 * 8 * 4 * (3 * 3 * 3)  # output positions x output channels x kernel volume
    products = 4 * 4 * 64 + 4 * 64 * 4  # (4x64)(64x4), then (4x4)(4x64)
    linear = 64 * 10
    assert count_macs(model, (1, 3, 8, 8)) == conv + products + linear
    assert model.training  # mode restored
    _, host = compute_model_complexity(model, (1, 3, 8, 8))
    assert host < conv + products + linear  # the host's layer hooks miss the products
