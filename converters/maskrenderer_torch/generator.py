"""The occlusion-aware generator: FOMM's (warp the bottleneck features only) and MaskRenderer's
(warp and gate the encoder features of every level, decode with skip concatenation)."""

import torch
from torch import nn

from converters.maskrenderer_torch.dense_motion import DenseMotionNetwork
from converters.maskrenderer_torch.layers import (
    DownBlock2d,
    ResBlock2d,
    SameBlock2d,
    UpBlock2d,
    deform,
    resize_bilinear,
)


class OcclusionAwareGenerator(nn.Module):
    """Encoder -> warp by the dense motion -> occlusion gating -> ResBlocks -> decoder.

    `skip_connections=False` is FOMM's generator; `skip_connections=True` is MaskRenderer's:
    every encoder level l (0 = full resolution) is warped and multiplied by its occlusion mask
    O_l, and the decoder concatenates level l's warped features after its up-block.
    """

    def __init__(
        self,
        num_channels,
        num_kp,
        block_expansion,
        max_features,
        num_down_blocks,
        num_bottleneck_blocks,
        dense_motion_params,
        estimate_occlusion_map=False,
        skip_connections=False,
    ):
        super().__init__()
        self.dense_motion_network = DenseMotionNetwork(
            num_kp=num_kp,
            num_channels=num_channels,
            estimate_occlusion_map=estimate_occlusion_map,
            **dense_motion_params,
        )

        def features(level):
            return min(max_features, block_expansion * 2**level)

        self.first = SameBlock2d(num_channels, block_expansion, kernel_size=(7, 7), padding=(3, 3))
        self.down_blocks = nn.ModuleList(
            DownBlock2d(features(i), features(i + 1), kernel_size=(3, 3), padding=(1, 1))
            for i in range(num_down_blocks)
        )
        # With skips, up-block i > 0 also reads the warped features of level num_down_blocks - i.
        skip = 2 if skip_connections else 1
        self.up_blocks = nn.ModuleList(
            UpBlock2d(
                features(num_down_blocks - i) * (skip if i else 1),
                features(num_down_blocks - i - 1),
                kernel_size=(3, 3),
                padding=(1, 1),
            )
            for i in range(num_down_blocks)
        )
        self.bottleneck = nn.Sequential()
        for i in range(num_bottleneck_blocks):
            self.bottleneck.add_module(
                "r" + str(i),
                ResBlock2d(features(num_down_blocks), kernel_size=(3, 3), padding=(1, 1)),
            )
        self.final = nn.Conv2d(
            block_expansion * skip, num_channels, kernel_size=(7, 7), padding=(3, 3)
        )
        self.skip_connections = skip_connections

    def encode(self, source_image):
        """Encoder features, finest first: level l is [B, C_l, H/2^l, W/2^l]."""
        feats = [self.first(source_image)]
        for block in self.down_blocks:
            feats.append(block(feats[-1]))
        return feats

    def forward(
        self,
        source_image,
        kp_driving,
        kp_source,
        extra_motions=None,
        extra_motion_weights=None,
        extra_inputs=None,
    ):
        """Renders the source with the driving motion.

        Args:
          source_image: [B, 3, H, W] in [0, 1].
          kp_driving, kp_source: {'value': [B, K, 2], 'jacobian': [B, K, 2, 2]}.
          extra_motions, extra_motion_weights, extra_inputs: see DenseMotionNetwork.
        Returns:
          the dense-motion outputs plus 'prediction' [B, 3, H, W] in (0, 1), 'deformed' (the
          source warped by the deformation) and 'warped_features' (the warped, gated source
          features of each warped level, finest first).
        """
        feats = self.encode(source_image)
        motion = self.dense_motion_network(
            source_image,
            kp_driving,
            kp_source,
            extra_motions=extra_motions,
            extra_motion_weights=extra_motion_weights,
            extra_inputs=extra_inputs,
        )
        deformation, occlusion = motion["deformation"], motion["occlusion_maps"]
        last = len(feats) - 1
        warped_levels = range(len(feats)) if self.skip_connections else [last]
        warped = {}
        for level in warped_levels:
            out = deform(feats[level], deformation)
            if occlusion:
                # One mask per level (multi-scale), else FOMM's single mask resized.
                mask = occlusion[level] if len(occlusion) > 1 else occlusion[0]
                out = out * resize_bilinear(mask, out.shape[2:])
            warped[level] = out

        out = self.bottleneck(warped[last])
        for i, block in enumerate(self.up_blocks):
            out = block(out)
            if self.skip_connections:
                out = torch.cat([out, warped[last - 1 - i]], dim=1)
        return {
            **motion,
            "prediction": torch.sigmoid(self.final(out)),
            "deformed": deform(source_image, deformation),
            "warped_features": [warped[level] for level in warped_levels],
        }
