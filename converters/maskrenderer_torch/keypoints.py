"""The keypoint detector (FOMM's KPDetector; the paper's FFD)."""

import torch
import torch.nn.functional as F
from torch import nn

from converters.maskrenderer_torch.layers import (
    AntiAliasInterpolation2d,
    Hourglass,
    make_coordinate_grid,
)


class KPDetector(nn.Module):
    """Keypoint detector: soft-argmax of hourglass heatmaps (+ local jacobians); `attention`:
    CBAM on the hourglass skips (MaskRenderer's FFD)."""

    def __init__(
        self,
        block_expansion,
        num_kp,
        num_channels,
        max_features,
        num_blocks,
        temperature,
        estimate_jacobian=False,
        scale_factor=1,
        single_jacobian_map=False,
        pad=0,
        attention=False,
    ):
        super().__init__()
        self.predictor = Hourglass(
            block_expansion,
            in_features=num_channels,
            max_features=max_features,
            num_blocks=num_blocks,
            attention=attention,
        )
        self.kp = nn.Conv2d(self.predictor.out_filters, num_kp, kernel_size=(7, 7), padding=pad)

        if estimate_jacobian:
            self.num_jacobian_maps = 1 if single_jacobian_map else num_kp
            self.jacobian = nn.Conv2d(
                self.predictor.out_filters,
                4 * self.num_jacobian_maps,
                kernel_size=(7, 7),
                padding=pad,
            )
            with torch.no_grad():  # FOMM's init: identity jacobian everywhere
                self.jacobian.weight.zero_()
                self.jacobian.bias.copy_(
                    torch.tensor([1.0, 0.0, 0.0, 1.0] * self.num_jacobian_maps)
                )
        else:
            self.jacobian = None

        self.temperature = temperature
        self.scale_factor = scale_factor
        if self.scale_factor != 1:
            self.down = AntiAliasInterpolation2d(num_channels, self.scale_factor)

    def gaussian2kp(self, heatmap):
        """Expected coordinate under each (normalised) heatmap [B, K, h, w]."""
        grid = make_coordinate_grid(heatmap.shape[2:], dtype=heatmap.dtype, device=heatmap.device)
        value = (heatmap.unsqueeze(-1) * grid[None, None]).sum(dim=(2, 3))
        return {"value": value}

    def forward(self, x):
        """x: [B, 3, H, W] in [0, 1] -> {'value': [B, K, 2] (x, y) in [-1, 1],
        'jacobian': [B, K, 2, 2] (when estimate_jacobian)}."""
        if self.scale_factor != 1:
            x = self.down(x)

        feature_map = self.predictor(x)[-1]
        prediction = self.kp(feature_map)

        b, k, h, w = prediction.shape
        heatmap = F.softmax(prediction.view(b, k, -1) / self.temperature, dim=2).view(b, k, h, w)
        out = self.gaussian2kp(heatmap)

        if self.jacobian is not None:
            jacobian_map = self.jacobian(feature_map).reshape(b, self.num_jacobian_maps, 4, h, w)
            jacobian = (heatmap.unsqueeze(2) * jacobian_map).view(b, k, 4, -1).sum(dim=-1)
            out["jacobian"] = jacobian.view(b, k, 2, 2)

        return out
