"""Blocks shared by the PyTorch networks: coordinate grids, FOMM's conv blocks, the hourglass
and the anti-alias downsampling. NCHW, float32; module attribute names are FOMM's.

Interpolation conventions (as the JAX networks, docs/DESIGN_NOTES.md):
  * every `F.grid_sample` passes `align_corners=True`: FOMM was trained with torch 1.0, whose
    grid_sample behaved so before the argument existed (the default became False in 1.3);
  * bilinear `F.interpolate` calls state `align_corners=False` (FOMM's, the default since
    torch 0.4.1);
  * `UpBlock2d` upsamples with nearest x2 and `AntiAliasInterpolation2d` subsamples with
    nearest, as FOMM.
"""

import torch
import torch.nn.functional as F
from torch import nn

BatchNorm2d = nn.BatchNorm2d  # FOMM's SynchronizedBatchNorm2d has the same keys


def make_coordinate_grid(spatial_size, dtype=torch.float32, device=None):
    """[h, w, 2] grid of (x, y) coordinates spanning [-1, 1] x [-1, 1]."""
    h, w = (int(s) for s in spatial_size)
    x = 2 * (torch.arange(w, dtype=dtype, device=device) / (w - 1)) - 1
    y = 2 * (torch.arange(h, dtype=dtype, device=device) / (h - 1)) - 1
    xx = x.view(1, w).expand(h, w)
    yy = y.view(h, 1).expand(h, w)
    return torch.stack([xx, yy], dim=2)


def kp2gaussian(kp, spatial_size, kp_variance):
    """Gaussian heatmaps [..., h, w] centred at kp['value'] ([..., 2])."""
    mean = kp["value"]
    grid = make_coordinate_grid(spatial_size, dtype=mean.dtype, device=mean.device)
    lead = mean.shape[:-1]
    grid = grid.view((1,) * len(lead) + grid.shape)
    mean = mean.view(lead + (1, 1, 2))
    return torch.exp(-0.5 * ((grid - mean) ** 2).sum(-1) / kp_variance)


class ResBlock2d(nn.Module):
    """Pre-activation residual block (BN-ReLU-conv twice), keeps resolution."""

    def __init__(self, in_features, kernel_size, padding):
        super().__init__()
        self.conv1 = nn.Conv2d(in_features, in_features, kernel_size=kernel_size, padding=padding)
        self.conv2 = nn.Conv2d(in_features, in_features, kernel_size=kernel_size, padding=padding)
        self.norm1 = BatchNorm2d(in_features, affine=True)
        self.norm2 = BatchNorm2d(in_features, affine=True)

    def forward(self, x):
        out = self.conv1(F.relu(self.norm1(x)))
        out = self.conv2(F.relu(self.norm2(out)))
        return out + x


class UpBlock2d(nn.Module):
    """Nearest x2 upsampling, then conv-BN-ReLU."""

    def __init__(self, in_features, out_features, kernel_size=3, padding=1, groups=1):
        super().__init__()
        self.conv = nn.Conv2d(
            in_features, out_features, kernel_size=kernel_size, padding=padding, groups=groups
        )
        self.norm = BatchNorm2d(out_features, affine=True)

    def forward(self, x):
        out = F.interpolate(x, scale_factor=2)  # nearest
        return F.relu(self.norm(self.conv(out)))


class DownBlock2d(nn.Module):
    """conv-BN-ReLU, then 2x2 average pooling."""

    def __init__(self, in_features, out_features, kernel_size=3, padding=1, groups=1):
        super().__init__()
        self.conv = nn.Conv2d(
            in_features, out_features, kernel_size=kernel_size, padding=padding, groups=groups
        )
        self.norm = BatchNorm2d(out_features, affine=True)
        self.pool = nn.AvgPool2d(kernel_size=(2, 2))

    def forward(self, x):
        return self.pool(F.relu(self.norm(self.conv(x))))


class SameBlock2d(nn.Module):
    """conv-BN-ReLU, keeps resolution."""

    def __init__(self, in_features, out_features, groups=1, kernel_size=3, padding=1):
        super().__init__()
        self.conv = nn.Conv2d(
            in_features, out_features, kernel_size=kernel_size, padding=padding, groups=groups
        )
        self.norm = BatchNorm2d(out_features, affine=True)

    def forward(self, x):
        return F.relu(self.norm(self.conv(x)))


class Encoder(nn.Module):
    """Hourglass encoder; returns the input followed by every block's output."""

    def __init__(self, block_expansion, in_features, num_blocks=3, max_features=256):
        super().__init__()
        blocks = []
        for i in range(num_blocks):
            cin = in_features if i == 0 else min(max_features, block_expansion * 2**i)
            cout = min(max_features, block_expansion * 2 ** (i + 1))
            blocks.append(DownBlock2d(cin, cout, kernel_size=3, padding=1))
        self.down_blocks = nn.ModuleList(blocks)

    def forward(self, x):
        outs = [x]
        for block in self.down_blocks:
            outs.append(block(outs[-1]))
        return outs


class Decoder(nn.Module):
    """Hourglass decoder; concatenates skips (up-path first, skip second)."""

    def __init__(self, block_expansion, in_features, num_blocks=3, max_features=256):
        super().__init__()
        blocks = []
        for i in reversed(range(num_blocks)):
            mult = 1 if i == num_blocks - 1 else 2
            cin = mult * min(max_features, block_expansion * 2 ** (i + 1))
            cout = min(max_features, block_expansion * 2**i)
            blocks.append(UpBlock2d(cin, cout, kernel_size=3, padding=1))
        self.up_blocks = nn.ModuleList(blocks)
        self.out_filters = block_expansion + in_features

    def forward(self, x):
        skips = list(x)  # do not mutate the caller's list
        out = skips.pop()
        for block in self.up_blocks:
            out = torch.cat([block(out), skips.pop()], dim=1)
        return out


class Hourglass(nn.Module):
    """U-Net style encoder/decoder."""

    def __init__(self, block_expansion, in_features, num_blocks=3, max_features=256):
        super().__init__()
        self.encoder = Encoder(block_expansion, in_features, num_blocks, max_features)
        self.decoder = Decoder(block_expansion, in_features, num_blocks, max_features)
        self.out_filters = self.decoder.out_filters

    def forward(self, x):
        return self.decoder(self.encoder(x))


class AntiAliasInterpolation2d(nn.Module):
    """Depthwise Gaussian blur followed by nearest subsampling by `scale`.

    The kernel is stored as the (non-trainable, fixed) buffer ``weight``.
    """

    def __init__(self, channels, scale):
        super().__init__()
        sigma = (1 / scale - 1) / 2
        kernel_size = 2 * round(sigma * 4) + 1
        self.ka = kernel_size // 2
        self.kb = self.ka - 1 if kernel_size % 2 == 0 else self.ka

        coords = torch.arange(kernel_size, dtype=torch.float32) - (kernel_size - 1) / 2
        g = torch.exp(-(coords**2) / (2 * sigma**2))
        kernel = g[:, None] * g[None, :]
        kernel = kernel / kernel.sum()
        kernel = kernel.view(1, 1, kernel_size, kernel_size).repeat(channels, 1, 1, 1)

        self.register_buffer("weight", kernel)
        self.groups = channels
        self.scale = scale

    def forward(self, input):
        if self.scale == 1.0:
            return input
        out = F.pad(input, (self.ka, self.kb, self.ka, self.kb))
        out = F.conv2d(out, weight=self.weight, groups=self.groups)
        return F.interpolate(out, scale_factor=(self.scale, self.scale))  # nearest
