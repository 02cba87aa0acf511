"""The occlusion-aware generator (FOMM's OcclusionAwareGenerator)."""

import torch
import torch.nn.functional as F
from torch import nn

from converters.maskrenderer_torch.dense_motion import DenseMotionNetwork
from converters.maskrenderer_torch.layers import DownBlock2d, ResBlock2d, SameBlock2d, UpBlock2d


class OcclusionAwareGenerator(nn.Module):
    """Encoder -> warp (dense motion) * occlusion -> residual bottleneck -> decoder."""

    def __init__(
        self,
        num_channels,
        num_kp,
        block_expansion,
        max_features,
        num_down_blocks,
        num_bottleneck_blocks,
        estimate_occlusion_map=False,
        dense_motion_params=None,
        estimate_jacobian=False,
    ):
        super().__init__()
        if dense_motion_params is not None:
            self.dense_motion_network = DenseMotionNetwork(
                num_kp=num_kp,
                num_channels=num_channels,
                estimate_occlusion_map=estimate_occlusion_map,
                **dense_motion_params,
            )
        else:
            self.dense_motion_network = None

        self.first = SameBlock2d(num_channels, block_expansion, kernel_size=(7, 7), padding=(3, 3))

        self.down_blocks = nn.ModuleList(
            [
                DownBlock2d(
                    min(max_features, block_expansion * 2**i),
                    min(max_features, block_expansion * 2 ** (i + 1)),
                    kernel_size=(3, 3),
                    padding=(1, 1),
                )
                for i in range(num_down_blocks)
            ]
        )

        self.up_blocks = nn.ModuleList(
            [
                UpBlock2d(
                    min(max_features, block_expansion * 2 ** (num_down_blocks - i)),
                    min(max_features, block_expansion * 2 ** (num_down_blocks - i - 1)),
                    kernel_size=(3, 3),
                    padding=(1, 1),
                )
                for i in range(num_down_blocks)
            ]
        )

        self.bottleneck = nn.Sequential()
        bottleneck_features = min(max_features, block_expansion * 2**num_down_blocks)
        for i in range(num_bottleneck_blocks):
            self.bottleneck.add_module(
                "r" + str(i), ResBlock2d(bottleneck_features, kernel_size=(3, 3), padding=(1, 1))
            )

        self.final = nn.Conv2d(block_expansion, num_channels, kernel_size=(7, 7), padding=(3, 3))
        self.estimate_occlusion_map = estimate_occlusion_map
        self.num_channels = num_channels

    def deform_input(self, inp, deformation):
        _, h_old, w_old, _ = deformation.shape
        _, _, h, w = inp.shape
        if (h_old, w_old) != (h, w):
            deformation = F.interpolate(
                deformation.permute(0, 3, 1, 2), size=(h, w), mode="bilinear", align_corners=False
            ).permute(0, 2, 3, 1)
        return F.grid_sample(inp, deformation, align_corners=True)  # torch 1.0 behaviour

    def forward(self, source_image, kp_driving, kp_source):
        out = self.first(source_image)
        for block in self.down_blocks:
            out = block(out)

        output_dict = {}
        if self.dense_motion_network is not None:
            dense_motion = self.dense_motion_network(
                source_image=source_image, kp_driving=kp_driving, kp_source=kp_source
            )
            output_dict["mask"] = dense_motion["mask"]
            output_dict["sparse_deformed"] = dense_motion["sparse_deformed"]
            occlusion_map = dense_motion.get("occlusion_map")
            if occlusion_map is not None:
                output_dict["occlusion_map"] = occlusion_map
            deformation = dense_motion["deformation"]
            output_dict["deformation"] = deformation  # extra key, not in FOMM

            out = self.deform_input(out, deformation)
            if occlusion_map is not None:
                if out.shape[2:] != occlusion_map.shape[2:]:
                    occlusion_map = F.interpolate(
                        occlusion_map, size=out.shape[2:], mode="bilinear", align_corners=False
                    )
                out = out * occlusion_map

            output_dict["deformed"] = self.deform_input(source_image, deformation)

        out = self.bottleneck(out)
        for block in self.up_blocks:
            out = block(out)
        output_dict["prediction"] = torch.sigmoid(self.final(out))
        return output_dict
