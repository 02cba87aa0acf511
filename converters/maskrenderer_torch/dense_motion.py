"""The dense motion network: FOMM's DenseMotionNetwork, extended as MaskRenderer's eq. (4)
(extra motions such as M_3D with their masks, an extra image input, CBAM skips, one occlusion
mask per generator level). With every extra off it is FOMM's."""

import math

import torch
import torch.nn.functional as F
from torch import nn

from converters.maskrenderer_torch.layers import (
    AntiAliasInterpolation2d,
    Hourglass,
    UpBlock2d,
    kp2gaussian,
    make_coordinate_grid,
    resize_bilinear,
)


class DenseMotionNetwork(nn.Module):
    """Predicts a dense backward flow (and occlusion) from sparse keypoint motions.

    Motions, in mask order: background, K keypoint motions, then `num_extra_motions` given
    fields (MaskRenderer: M_3D). Each contributes its weight channel (keypoint heatmap
    difference; zero for the background; the given coverage for extra motions) and the source
    warped by it to the hourglass input; `num_extra_input_channels` of extra images (the
    rendered 3D face) follow them.

    Occlusion: `num_occlusion_masks == 1` is FOMM's single mask (`occlusion`). With more, mask
    l (`occlusion.l`) is at 1/2^l of the image resolution (TPSMM): levels at or below the
    dense-motion resolution read the matching hourglass decoder level, finer ones the extra
    up-blocks `up.i` after the last decoder level.
    """

    def __init__(
        self,
        block_expansion,
        num_blocks,
        max_features,
        num_kp,
        num_channels,
        estimate_occlusion_map=False,
        scale_factor=1,
        kp_variance=0.01,
        num_occlusion_masks=1,
        num_extra_motions=0,
        num_extra_input_channels=0,
        attention=False,
    ):
        super().__init__()
        num_motions = num_kp + 1 + num_extra_motions
        self.hourglass = Hourglass(
            block_expansion=block_expansion,
            in_features=num_motions * (num_channels + 1) + num_extra_input_channels,
            max_features=max_features,
            num_blocks=num_blocks,
            attention=attention,
        )
        features = self.hourglass.out_filters
        self.mask = nn.Conv2d(features, num_motions, kernel_size=(7, 7), padding=(3, 3))
        self.occlusion = None
        if estimate_occlusion_map and num_occlusion_masks == 1:
            self.occlusion = nn.Conv2d(features, 1, kernel_size=(7, 7), padding=(3, 3))
        elif estimate_occlusion_map:
            self._add_multiscale_occlusion(num_occlusion_masks, scale_factor)

        self.num_kp = num_kp
        self.num_extra_motions = num_extra_motions
        self.scale_factor = scale_factor
        self.kp_variance = kp_variance
        if self.scale_factor != 1:
            self.down = AntiAliasInterpolation2d(num_channels, self.scale_factor)

    def _add_multiscale_occlusion(self, num_masks, scale_factor):
        """`up.i` up-blocks to the image resolution, `occlusion.l` heads; `occlusion_sources`
        says where mask l reads: ('up', i) or ('level', decoder level from the last)."""
        features = self.hourglass.out_filters
        num_up = round(math.log2(1 / scale_factor))
        self.up = nn.ModuleList(
            UpBlock2d(features // 2**i, features // 2 ** (i + 1)) for i in range(num_up)
        )
        self.occlusion_sources, heads = [], []
        levels = self.hourglass.decoder.level_channels
        for level in range(num_masks):
            if level <= num_up:  # at or above the dense-motion resolution
                source, channels = ("up", num_up - level), features // 2 ** (num_up - level)
            elif level - num_up < len(levels):
                source, channels = ("level", level - num_up), levels[-1 - (level - num_up)]
            else:
                raise ValueError(
                    f"no dense-motion feature at 1/{2**level} of the image for occlusion "
                    f"mask {level}: increase num_blocks or lower the mask count"
                )
            self.occlusion_sources.append(source)
            heads.append(nn.Conv2d(channels, 1, kernel_size=(7, 7), padding=(3, 3)))
        self.occlusion = nn.ModuleList(heads)

    def create_heatmap_representations(self, source_image, kp_driving, kp_source):
        """Eq. 6: H_k = G(kp_driving) - G(kp_source), plus a zero background map.

        Returns [B, K+1, 1, h, w].
        """
        spatial_size = source_image.shape[2:]
        heatmap = kp2gaussian(kp_driving, spatial_size, self.kp_variance) - kp2gaussian(
            kp_source, spatial_size, self.kp_variance
        )
        zeros = heatmap.new_zeros((heatmap.shape[0], 1) + tuple(spatial_size))
        return torch.cat([zeros, heatmap], dim=1).unsqueeze(2)

    def create_sparse_motions(self, source_image, kp_driving, kp_source):
        """Eq. 4: T_{s<-d}(z) = kp_s + J_s J_d^{-1} (z - kp_d); background = identity.

        Returns [B, K+1, h, w, 2].
        """
        bs, _, h, w = source_image.shape
        kp_s, kp_d = kp_source["value"], kp_driving["value"]
        identity = make_coordinate_grid((h, w), dtype=kp_s.dtype, device=kp_s.device).view(
            1, 1, h, w, 2
        )
        coords = identity - kp_d.view(bs, self.num_kp, 1, 1, 2)
        if "jacobian" in kp_driving:
            jac = torch.matmul(kp_source["jacobian"], torch.inverse(kp_driving["jacobian"]))
            jac = jac[:, :, None, None]  # [B, K, 1, 1, 2, 2]
            coords = torch.matmul(jac, coords.unsqueeze(-1)).squeeze(-1)
        driving_to_source = coords + kp_s.view(bs, self.num_kp, 1, 1, 2)
        return torch.cat([identity.expand(bs, 1, h, w, 2), driving_to_source], dim=1)

    def create_deformed_source_image(self, source_image, sparse_motions):
        """Eq. 7: source warped by each motion [B, M, h, w, 2]. Returns [B, M, C, h, w]."""
        bs, c, h, w = source_image.shape
        n = sparse_motions.shape[1]
        source_repeat = source_image.unsqueeze(1).expand(bs, n, c, h, w).reshape(bs * n, c, h, w)
        grids = sparse_motions.reshape(bs * n, h, w, 2)
        deformed = F.grid_sample(source_repeat, grids, align_corners=True)  # torch 1.0 behaviour
        return deformed.view(bs, n, c, h, w)

    def forward(
        self,
        source_image,
        kp_driving,
        kp_source,
        extra_motions=None,
        extra_motion_weights=None,
        extra_inputs=None,
    ):
        """Predicts the driving -> source deformation.

        Args:
          source_image: [B, C, H, W] in [0, 1].
          kp_driving, kp_source: {'value': [B, K, 2], optional 'jacobian': [B, K, 2, 2]}.
          extra_motions: [B, E, H', W', 2] sampling grids (driving pixel -> source position),
            resized bilinearly to the dense-motion resolution.
          extra_motion_weights: [B, E, H', W'] in [0, 1] where each is valid; ones if None.
          extra_inputs: [B, C', H', W'] extra images (the rendered face), anti-alias resized.
        Returns:
          {'sparse_deformed': [B, M, C, h, w], 'mask': [B, M, h, w] (softmax over the
           M = K+1+E motions), 'deformation': [B, h, w, 2], 'occlusion_maps': list of
           [B, 1, h_l, w_l] in (0, 1), finest first (empty without occlusion)}.
        """
        if (extra_motions is None) != (self.num_extra_motions == 0):
            given = None if extra_motions is None else tuple(extra_motions.shape)
            raise ValueError(
                f"configured for {self.num_extra_motions} extra motions; extra_motions: {given}"
            )
        if self.scale_factor != 1:
            source_image = self.down(source_image)
        bs, _, h, w = source_image.shape

        weights = self.create_heatmap_representations(source_image, kp_driving, kp_source)
        motions = self.create_sparse_motions(source_image, kp_driving, kp_source)
        if extra_motions is not None:
            num = extra_motions.shape[1]
            extra = extra_motions.permute(0, 1, 4, 2, 3).reshape(
                bs, num * 2, *extra_motions.shape[2:4]
            )
            extra = resize_bilinear(extra, (h, w)).view(bs, num, 2, h, w).permute(0, 1, 3, 4, 2)
            if extra_motion_weights is None:
                extra_weights = extra.new_ones((bs, num, h, w))
            else:
                extra_weights = resize_bilinear(extra_motion_weights, (h, w))
            motions = torch.cat([motions, extra], dim=1)
            weights = torch.cat([weights, extra_weights.unsqueeze(2)], dim=1)

        deformed_source = self.create_deformed_source_image(source_image, motions)
        inp = torch.cat([weights, deformed_source], dim=2).view(bs, -1, h, w)
        if extra_inputs is not None:
            if self.scale_factor != 1:
                extra_inputs = self.down(extra_inputs)
            inp = torch.cat([inp, resize_bilinear(extra_inputs, (h, w))], dim=1)
        levels = self.hourglass(inp)

        mask = F.softmax(self.mask(levels[-1]), dim=1)
        # [B, M, 1, h, w] * [B, M, 2, h, w] -> [B, 2, h, w] -> [B, h, w, 2]
        deformation = (motions.permute(0, 1, 4, 2, 3) * mask.unsqueeze(2)).sum(dim=1)
        return {
            "sparse_deformed": deformed_source,
            "mask": mask,
            "deformation": deformation.permute(0, 2, 3, 1),
            "occlusion_maps": self._occlusion_maps(levels),
        }

    def _occlusion_maps(self, levels):
        if self.occlusion is None:
            return []
        if isinstance(self.occlusion, nn.Conv2d):  # Sec. 3.2 of FOMM
            return [torch.sigmoid(self.occlusion(levels[-1]))]
        finer = [levels[-1]]
        for block in self.up:
            finer.append(block(finer[-1]))
        maps = []
        for head, (kind, index) in zip(self.occlusion, self.occlusion_sources, strict=True):
            feature = finer[index] if kind == "up" else levels[-1 - index]
            maps.append(torch.sigmoid(head(feature)))
        return maps
