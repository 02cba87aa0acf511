"""Occlusion-aware generator: FOMM's (warp the bottleneck features only) and MaskRenderer's
(warp and gate the encoder features of every level, decode with skip concatenation)."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from maskrenderer_jax.models.dense_motion import DenseMotionNetwork
from maskrenderer_jax.models.keypoints import check_image
from maskrenderer_jax.models.layers import (
    Conv,
    DownBlock,
    ResBlock,
    SameBlock,
    UpBlock,
    resize_bilinear,
    warp,
)

Dtype = Any


def deform(inputs: jax.Array, deformation: jax.Array) -> jax.Array:
    """Warps [B, H, W, C] by a deformation of any resolution (resized bilinearly as FOMM)."""
    deformation = resize_bilinear(deformation, inputs.shape[1], inputs.shape[2])
    return warp(inputs, deformation)


class OcclusionAwareGenerator(nn.Module):
    """Encoder -> warp by the dense motion -> occlusion gating -> ResBlocks -> decoder.

    `skip_connections=False` is FOMM's generator (only the deepest encoder level is warped).
    `skip_connections=True` is MaskRenderer's: every encoder level l (0 = full resolution) is
    warped and multiplied by its occlusion mask O_l, and the decoder concatenates level l's
    warped features after its up-block. Names follow FOMM's `generator` state dict (`first`,
    `down_blocks_i`, `bottleneck_r{i}`, `up_blocks_i`, `final`, `dense_motion_network`).
    """

    num_kp: int = 10
    block_expansion: int = 64
    max_features: int = 512
    num_down_blocks: int = 2
    num_bottleneck_blocks: int = 6
    skip_connections: bool = False
    dense_motion: dict | None = None  # DenseMotionNetwork kwargs (num_kp added here)
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        features = lambda level: min(self.max_features, self.block_expansion * 2**level)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.dense_motion_network = DenseMotionNetwork(
            num_kp=self.num_kp, **(self.dense_motion or {}), **kw
        )
        self.first = SameBlock(self.block_expansion, kernel_size=7, **kw)
        self.down_blocks = [DownBlock(features(i + 1), **kw) for i in range(self.num_down_blocks)]
        self.bottleneck = {f"r{i}": ResBlock(**kw) for i in range(self.num_bottleneck_blocks)}
        self.up_blocks = [
            UpBlock(features(self.num_down_blocks - i - 1), **kw)
            for i in range(self.num_down_blocks)
        ]
        self.final = Conv(3, kernel_size=7, **kw)

    def encode(self, image: jax.Array, *, train: bool) -> list[jax.Array]:
        """Encoder features of an image, finest first: level l is [B, H/2^l, W/2^l, C_l]."""
        check_image(image)
        feats = [self.first(image.astype(self.dtype), train=train)]
        for block in self.down_blocks:
            feats.append(block(feats[-1], train=train))
        return feats

    def __call__(
        self,
        source: jax.Array,
        kp_driving: dict,
        kp_source: dict,
        *,
        extra_motions: jax.Array | None = None,
        extra_motion_weights: jax.Array | None = None,
        extra_inputs: jax.Array | None = None,
        source_features: list[jax.Array] | None = None,
        train: bool,
    ) -> dict:
        """Renders the source with the driving motion.

        Args:
          source: [B, H, W, 3] float32 in [0, 1].
          kp_driving, kp_source: {'value': [B, K, 2], 'jacobian': [B, K, 2, 2]}.
          extra_motions, extra_motion_weights, extra_inputs: see DenseMotionNetwork.
          source_features: `encode(source)` computed beforehand (inference encodes a source
            once for all its driving frames); None: encoded here.
        Returns:
          the dense-motion outputs plus 'prediction' [B, H, W, 3] float32 in (0, 1),
          'deformed' [B, H, W, 3] (the source warped by the deformation) and
          'warped_features': the warped, occlusion-gated source features of each warped level
          (finest first; FOMM: the deepest level only), for the warping loss.
        """
        feats = self.encode(source, train=train) if source_features is None else source_features
        motion = self.dense_motion_network(
            source,
            kp_driving,
            kp_source,
            extra_motions=extra_motions,
            extra_motion_weights=extra_motion_weights,
            extra_inputs=extra_inputs,
            train=train,
        )
        deformation = motion["deformation"]
        occlusion = motion["occlusion_maps"]
        warped_levels = range(len(feats)) if self.skip_connections else [len(feats) - 1]
        warped = {}
        for level in warped_levels:
            x = deform(feats[level], deformation)
            if occlusion:
                # One mask per level (multi-scale), else FOMM's single mask resized.
                mask = occlusion[level] if len(occlusion) > 1 else occlusion[0]
                x = x * resize_bilinear(mask, x.shape[1], x.shape[2]).astype(x.dtype)
            warped[level] = x

        out = warped[len(feats) - 1]
        for block in self.bottleneck.values():
            out = block(out, train=train)
        for i, block in enumerate(self.up_blocks):
            out = block(out, train=train)
            level = self.num_down_blocks - 1 - i
            if self.skip_connections:
                out = jnp.concatenate([out, warped[level]], axis=-1)
        prediction = nn.sigmoid(self.final(out).astype(jnp.float32))
        return {
            **motion,
            "prediction": prediction,
            "deformed": deform(source.astype(jnp.float32), deformation),
            "warped_features": tuple(warped[level] for level in warped_levels),
        }
