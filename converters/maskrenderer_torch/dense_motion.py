"""The dense motion network (FOMM's DenseMotionNetwork)."""

import torch
import torch.nn.functional as F
from torch import nn

from converters.maskrenderer_torch.layers import (
    AntiAliasInterpolation2d,
    Hourglass,
    kp2gaussian,
    make_coordinate_grid,
)


class DenseMotionNetwork(nn.Module):
    """Predicts a dense backward flow (and occlusion) from sparse keypoint motions."""

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
    ):
        super().__init__()
        self.hourglass = Hourglass(
            block_expansion=block_expansion,
            in_features=(num_kp + 1) * (num_channels + 1),
            max_features=max_features,
            num_blocks=num_blocks,
        )
        self.mask = nn.Conv2d(
            self.hourglass.out_filters, num_kp + 1, kernel_size=(7, 7), padding=(3, 3)
        )
        if estimate_occlusion_map:
            self.occlusion = nn.Conv2d(
                self.hourglass.out_filters, 1, kernel_size=(7, 7), padding=(3, 3)
            )
        else:
            self.occlusion = None

        self.num_kp = num_kp
        self.scale_factor = scale_factor
        self.kp_variance = kp_variance
        if self.scale_factor != 1:
            self.down = AntiAliasInterpolation2d(num_channels, self.scale_factor)

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
        """Eq. 7: source warped by each sparse motion. Returns [B, K+1, C, h, w]."""
        bs, c, h, w = source_image.shape
        n = self.num_kp + 1
        source_repeat = source_image.unsqueeze(1).expand(bs, n, c, h, w).reshape(bs * n, c, h, w)
        grids = sparse_motions.reshape(bs * n, h, w, 2)
        deformed = F.grid_sample(source_repeat, grids, align_corners=True)  # torch 1.0 behaviour
        return deformed.view(bs, n, c, h, w)

    def forward(self, source_image, kp_driving, kp_source):
        if self.scale_factor != 1:
            source_image = self.down(source_image)
        bs, _, h, w = source_image.shape

        out_dict = {}
        heatmap_representation = self.create_heatmap_representations(
            source_image, kp_driving, kp_source
        )
        sparse_motion = self.create_sparse_motions(source_image, kp_driving, kp_source)
        deformed_source = self.create_deformed_source_image(source_image, sparse_motion)
        out_dict["sparse_deformed"] = deformed_source

        inp = torch.cat([heatmap_representation, deformed_source], dim=2).view(bs, -1, h, w)
        prediction = self.hourglass(inp)

        mask = F.softmax(self.mask(prediction), dim=1)
        out_dict["mask"] = mask
        # [B, K+1, 1, h, w] * [B, K+1, 2, h, w] -> [B, 2, h, w] -> [B, h, w, 2]
        deformation = (sparse_motion.permute(0, 1, 4, 2, 3) * mask.unsqueeze(2)).sum(dim=1)
        out_dict["deformation"] = deformation.permute(0, 2, 3, 1)

        if self.occlusion is not None:  # Sec. 3.2
            out_dict["occlusion_map"] = torch.sigmoid(self.occlusion(prediction))

        return out_dict
