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


class CBAM(nn.Module):
    """Convolutional Block Attention Module (Woo et al. 2018): channel then spatial attention.

    Channel: a shared MLP (C -> C/r -> C) on the average- and max-pooled features, summed,
    sigmoid. Spatial: a 7x7 conv on the channel-wise average and max, sigmoid.
    """

    def __init__(self, channels, reduction=16, spatial_kernel=7):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)
        self.spatial = nn.Conv2d(2, 1, spatial_kernel, padding=spatial_kernel // 2)

    def forward(self, x):
        """x: [B, C, H, W] -> [B, C, H, W]."""

        def mlp(v):
            return self.fc2(F.relu(self.fc1(v)))

        gate = torch.sigmoid(mlp(x.mean(dim=(2, 3))) + mlp(x.amax(dim=(2, 3))))
        x = x * gate[:, :, None, None]
        stats = torch.stack([x.mean(dim=1), x.amax(dim=1)], dim=1)
        return x * torch.sigmoid(self.spatial(stats))


class Decoder(nn.Module):
    """Hourglass decoder; concatenates skips (up-path first, skip second). With `attention`
    (MaskRenderer) every feature skip passes through CBAM (`attention.i` for up-block i); the
    input itself (the last skip: images, heatmaps) does not.

    `level_channels`: the channels of each level's output, coarsest first.
    """

    def __init__(self, block_expansion, in_features, num_blocks=3, max_features=256,
                 attention=False):  # fmt: skip
        super().__init__()
        blocks, self.level_channels = [], []
        for i in reversed(range(num_blocks)):
            mult = 1 if i == num_blocks - 1 else 2
            cin = mult * min(max_features, block_expansion * 2 ** (i + 1))
            cout = min(max_features, block_expansion * 2**i)
            blocks.append(UpBlock2d(cin, cout, kernel_size=3, padding=1))
            self.level_channels.append(cout + (cout if i else in_features))
        self.up_blocks = nn.ModuleList(blocks)
        self.attention = None
        if attention:
            self.attention = nn.ModuleList(
                CBAM(min(max_features, block_expansion * 2**level))
                for level in reversed(range(1, num_blocks))
            )
        self.out_filters = block_expansion + in_features

    def forward(self, x):
        """x: the encoder's outputs -> every level's output, coarsest first (FOMM's hourglass
        output is the last)."""
        skips = list(x)  # do not mutate the caller's list
        out = skips.pop()
        outs = []
        for i, block in enumerate(self.up_blocks):
            skip = skips.pop()
            level = len(self.up_blocks) - 1 - i  # 0: the input itself, no attention
            if self.attention is not None and level > 0:
                skip = self.attention[i](skip)
            out = torch.cat([block(out), skip], dim=1)
            outs.append(out)
        return outs


class Hourglass(nn.Module):
    """U-Net style encoder/decoder; returns the decoder's levels, coarsest first (the last is
    FOMM's output, `out_filters` channels at the input's resolution)."""

    def __init__(self, block_expansion, in_features, num_blocks=3, max_features=256,
                 attention=False):  # fmt: skip
        super().__init__()
        self.encoder = Encoder(block_expansion, in_features, num_blocks, max_features)
        self.decoder = Decoder(block_expansion, in_features, num_blocks, max_features, attention)
        self.out_filters = self.decoder.out_filters

    def forward(self, x):
        return self.decoder(self.encoder(x))


def resize_bilinear(x, size):
    """[B, C, h, w] -> [B, C, *size], FOMM's bilinear resize (align_corners=False)."""
    if tuple(x.shape[2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def deform(inputs, deformation):
    """Warps [B, C, H, W] by a deformation [B, h, w, 2] of any resolution (resized bilinearly,
    as FOMM's deform_input)."""
    deformation = resize_bilinear(deformation.permute(0, 3, 1, 2), inputs.shape[2:])
    return F.grid_sample(inputs, deformation.permute(0, 2, 3, 1), align_corners=True)


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
