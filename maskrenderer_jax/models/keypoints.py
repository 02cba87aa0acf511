"""Facial feature detector (the paper's FFD; FOMM's KPDetector): K keypoints with jacobians."""

from typing import Any

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp

from maskrenderer_jax.models.layers import AntiAliasDownsample, Hourglass, coordinate_grid

Dtype = Any


def check_image(image: jax.Array, name: str = "image") -> None:
    """Raises ValueError unless `image` is [B, H, W, 3]."""
    if image.ndim != 4 or image.shape[-1] != 3:
        raise ValueError(f"{name} must be [B, H, W, 3] (NHWC RGB in [0, 1]); got {image.shape}")


class KPDetector(nn.Module):
    """Hourglass -> K heatmaps -> softmax(heatmap / temperature) -> expected coordinates.

    Submodule names follow FOMM's `kp_detector` state dict (`predictor`, `kp`, `jacobian`).
    """

    num_kp: int = 10
    block_expansion: int = 32
    max_features: int = 1024
    num_blocks: int = 5
    temperature: float = 0.1
    estimate_jacobian: bool = True
    single_jacobian_map: bool = False
    scale_factor: float = 0.25
    pad: int = 0
    attention: bool = False  # CBAM on the hourglass skips (MaskRenderer's FFD)
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, image: jax.Array, *, train: bool) -> dict[str, jax.Array]:
        """Detects K facial features.

        Args:
          image: [B, H, W, 3] float32 in [0, 1].
        Returns:
          {'value': [B, K, 2] float32 (x, y) in [-1, 1],
           'jacobian': [B, K, 2, 2] float32 (when estimate_jacobian)}.
        """
        check_image(image)
        x = AntiAliasDownsample(self.scale_factor, name="down")(image.astype(jnp.float32))
        features = Hourglass(
            self.block_expansion,
            self.num_blocks,
            self.max_features,
            self.attention,
            self.dtype,
            self.param_dtype,
            name="predictor",
        )(x.astype(self.dtype), train=train)[-1]
        head = lambda n, name, **kw: nn.Conv(
            n,
            (7, 7),
            padding=((self.pad, self.pad),) * 2,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name=name,
            **kw,
        )(features).astype(jnp.float32)

        prediction = head(self.num_kp, "kp")
        batch, h, w, _ = prediction.shape
        # FOMM: softmax over space of heatmap / temperature (0.1 for vox).
        logits = einops.rearrange(prediction, "b h w k -> b k (h w)") / self.temperature
        heatmap = jax.nn.softmax(logits, axis=-1)
        grid = coordinate_grid(h, w).reshape(h * w, 2)
        out = {"value": jnp.einsum("bkp,pc->bkc", heatmap, grid)}

        if self.estimate_jacobian:
            num_maps = 1 if self.single_jacobian_map else self.num_kp
            # FOMM initialises the jacobian head to the identity: zero weights, bias [1,0,0,1].
            bias_init = lambda key, shape, dtype: jnp.tile(
                jnp.array([1.0, 0.0, 0.0, 1.0], dtype), num_maps
            )
            jac_map = head(
                4 * num_maps, "jacobian", kernel_init=nn.initializers.zeros, bias_init=bias_init
            )
            jac_map = einops.rearrange(jac_map, "b h w (k f) -> b k f (h w)", f=4)
            jac_map = jnp.broadcast_to(jac_map, (batch, self.num_kp, 4, h * w))
            jacobian = jnp.einsum("bkp,bkfp->bkf", heatmap, jac_map)
            out["jacobian"] = jacobian.reshape(batch, self.num_kp, 2, 2)
        return out
