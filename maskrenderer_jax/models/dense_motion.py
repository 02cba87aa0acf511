"""Dense motion network: K local affine motions (+ background, + extra motions such as the 3D
motion M_3D) blended by softmax masks into one deformation, plus occlusion masks."""

import math
from typing import Any

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp

from maskrenderer_jax.models.layers import (
    AntiAliasDownsample,
    Hourglass,
    UpBlock,
    coordinate_grid,
    inverse_2x2,
    kp2gaussian,
    resize_bilinear,
    warp,
)

Dtype = Any


def sparse_motions(height: int, width: int, kp_driving: dict, kp_source: dict) -> jax.Array:
    """Eq. (3): the background identity and, per keypoint k, z -> J_s J_d^-1 (z - d_k) + s_k.

    Returns:
      [B, K+1, H, W, 2] float32 sampling grids (background first), FOMM's create_sparse_motions.
    """
    grid = coordinate_grid(height, width)
    offset = grid[None, None] - kp_driving["value"][:, :, None, None, :]
    if "jacobian" in kp_driving:
        jacobian = kp_source["jacobian"] @ inverse_2x2(kp_driving["jacobian"])
        offset = jnp.einsum("bkij,bkhwj->bkhwi", jacobian, offset)
    driving_to_source = offset + kp_source["value"][:, :, None, None, :]
    identity = jnp.broadcast_to(grid, (offset.shape[0], 1, height, width, 2))
    return jnp.concatenate([identity, driving_to_source], axis=1)


def heatmap_representation(
    height: int, width: int, kp_driving: dict, kp_source: dict, variance: float
) -> jax.Array:
    """G(kp_d) - G(kp_s) per keypoint with a zero background channel: [B, K+1, H, W]."""
    heat = kp2gaussian(kp_driving["value"], height, width, variance)
    heat = heat - kp2gaussian(kp_source["value"], height, width, variance)
    heat = einops.rearrange(heat, "b h w k -> b k h w")
    return jnp.concatenate([jnp.zeros_like(heat[:, :1]), heat], axis=1)


class DenseMotionNetwork(nn.Module):
    """FOMM's DenseMotionNetwork, extended as MaskRenderer's eq. (4).

    Motions, in mask order: background, K keypoint motions, then `num_extra_motions` given
    fields (MaskRenderer: M_3D). Each motion contributes its weight channel (keypoint heatmap
    difference; zero for the background; the caller's coverage for extra motions) and the
    source warped by it to the hourglass input; extra image inputs (the rendered 3D face) are
    appended after them. With everything extra off this is FOMM exactly.

    Occlusion: `num_occlusion_masks == 1` is FOMM's single mask at the dense-motion
    resolution. With more, mask l is at the resolution H / 2^l of generator level l (TPSMM):
    levels at or below the dense-motion resolution read the matching hourglass decoder
    output, finer ones come from extra up-blocks after the last decoder level.
    """

    num_kp: int = 10
    block_expansion: int = 64
    max_features: int = 1024
    num_blocks: int = 5
    scale_factor: float = 0.25
    kp_variance: float = 0.01
    estimate_occlusion_map: bool = True
    num_occlusion_masks: int = 1
    num_extra_motions: int = 0
    attention: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        source: jax.Array,
        kp_driving: dict,
        kp_source: dict,
        *,
        extra_motions: jax.Array | None = None,
        extra_motion_weights: jax.Array | None = None,
        extra_inputs: jax.Array | None = None,
        train: bool,
    ) -> dict:
        """Predicts the driving -> source deformation.

        Args:
          source: [B, H, W, 3] float32 in [0, 1].
          kp_driving, kp_source: {'value': [B, K, 2], optional 'jacobian': [B, K, 2, 2]}.
          extra_motions: [B, E, H', W', 2] sampling grids (driving pixel -> source position,
            FOMM grid convention), resized bilinearly to the dense-motion resolution.
          extra_motion_weights: [B, E, H', W'] in [0, 1], where each extra motion is valid
            (e.g. the 3D face coverage); ones when omitted.
          extra_inputs: [B, H', W', C] extra images (the rendered face), anti-alias resized.
        Returns:
          {'sparse_deformed': [B, M, h, w, 3], 'mask': [B, h, w, M] (softmax over the
           M = K+1+E motions), 'deformation': [B, h, w, 2] (x, y) in the grid convention,
           'occlusion_maps': tuple of [B, h_l, w_l, 1] in (0, 1), finest first (empty when
           occlusion is off)}; h, w = H, W times scale_factor.
        """
        if (extra_motions is None) != (self.num_extra_motions == 0):
            raise ValueError(
                f"configured for {self.num_extra_motions} extra motions but extra_motions is "
                f"{None if extra_motions is None else extra_motions.shape}"
            )
        down = AntiAliasDownsample(self.scale_factor, name="down")
        image = down(source.astype(jnp.float32))
        batch, h, w, _ = image.shape

        motions = sparse_motions(h, w, kp_driving, kp_source)
        weights = heatmap_representation(h, w, kp_driving, kp_source, self.kp_variance)
        if extra_motions is not None:
            if extra_motions.shape[1] != self.num_extra_motions:
                raise ValueError(
                    f"expected {self.num_extra_motions} extra motions, got "
                    f"extra_motions {extra_motions.shape}"
                )
            extra = einops.rearrange(extra_motions, "b e h w c -> b h w (e c)")
            extra = einops.rearrange(
                resize_bilinear(extra.astype(jnp.float32), h, w), "b h w (e c) -> b e h w c", c=2
            )
            if extra_motion_weights is None:
                extra_weights = jnp.ones(extra.shape[:-1], jnp.float32)
            else:
                extra_weights = einops.rearrange(
                    resize_bilinear(
                        einops.rearrange(extra_motion_weights, "b e h w -> b h w e").astype(
                            jnp.float32
                        ),
                        h,
                        w,
                    ),
                    "b h w e -> b e h w",
                )
            motions = jnp.concatenate([motions, extra], axis=1)
            weights = jnp.concatenate([weights, extra_weights], axis=1)

        deformed = warp(image, motions)  # [B, M, h, w, 3]
        hourglass_input = einops.rearrange(
            jnp.concatenate([weights[..., None], deformed], axis=-1), "b m h w c -> b h w (m c)"
        )
        if extra_inputs is not None:
            hourglass_input = jnp.concatenate(
                [hourglass_input, resize_bilinear(down(extra_inputs.astype(jnp.float32)), h, w)],
                axis=-1,
            )

        levels = Hourglass(
            self.block_expansion,
            self.num_blocks,
            self.max_features,
            self.attention,
            self.dtype,
            self.param_dtype,
            name="hourglass",
        )(hourglass_input.astype(self.dtype), train=train)
        conv7 = lambda n, name: nn.Conv(
            n,
            (7, 7),
            padding=((3, 3), (3, 3)),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name=name,
        )
        logits = conv7(motions.shape[1], "mask")(levels[-1]).astype(jnp.float32)
        mask = jax.nn.softmax(logits, axis=-1)
        deformation = jnp.einsum("bhwm,bmhwc->bhwc", mask, motions)  # eq. (4)

        occlusion_maps = ()
        if self.estimate_occlusion_map and self.num_occlusion_masks == 1:
            occlusion_maps = (nn.sigmoid(conv7(1, "occlusion")(levels[-1]).astype(jnp.float32)),)
        elif self.estimate_occlusion_map:
            occlusion_maps = self._multiscale_occlusion(levels, source.shape[1], train=train)
        return {
            "sparse_deformed": deformed,
            "mask": mask,
            "deformation": deformation,
            "occlusion_maps": occlusion_maps,
        }

    def _multiscale_occlusion(self, levels: list, image_height: int, *, train: bool) -> tuple:
        """One sigmoid mask per generator level l (resolution image_height / 2^l), finest first."""
        dense_height = levels[-1].shape[1]
        num_up = round(math.log2(image_height / dense_height))
        finer = [levels[-1]]
        for i in range(num_up):
            features = levels[-1].shape[-1] // 2 ** (i + 1)
            finer.append(
                UpBlock(features, self.dtype, self.param_dtype, name=f"up_{i}")(
                    finer[-1], train=train
                )
            )
        by_height = {x.shape[1]: x for x in [*levels, *finer]}
        maps = []
        for level in range(self.num_occlusion_masks):
            height = image_height // 2**level
            if height not in by_height:
                raise ValueError(
                    f"no dense-motion feature at resolution {height} for occlusion "
                    f"mask {level}: increase num_blocks or lower the mask count"
                )
            logits = nn.Conv(
                1,
                (7, 7),
                padding=((3, 3), (3, 3)),
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name=f"occlusion_{level}",
            )(by_height[height])
            maps.append(nn.sigmoid(logits.astype(jnp.float32)))
        return tuple(maps)
