"""Multi-scale patch discriminator (FOMM): optional spectral norm, instance norm, optional
keypoint heatmaps as extra input channels."""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from maskrenderer_jax.models.layers import avg_pool2x2, kp2gaussian

Dtype = Any


def scale_name(scale: float) -> str:
    """FOMM's ModuleDict key of a pyramid scale: 1 -> '1', 0.5 -> '0-5'."""
    return str(scale).replace(".", "-")


def _l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    return x / jnp.maximum(jnp.linalg.norm(x), eps)  # torch F.normalize


class SpectralNormConv(nn.Module):
    """Conv whose kernel is divided by its largest singular value, as torch's spectral_norm.

    The power-iteration vectors live in `batch_stats` as `u` [O] and `v` [I*kh*kw], laid out
    as torch's `weight_u`/`weight_v` (the kernel flattened in OIHW order). Training runs one
    power iteration and stores u, v; evaluation uses the stored vectors as they are.
    """

    features: int
    kernel_size: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        k = self.kernel_size
        kernel = self.param(
            "kernel",
            nn.initializers.lecun_normal(),
            (k, k, x.shape[-1], self.features),
            self.param_dtype,
        )
        bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
        matrix = jnp.transpose(kernel, (3, 2, 0, 1)).reshape(self.features, -1)  # OIHW rows
        init = lambda n: (
            lambda: _l2_normalize(jax.random.normal(self.make_rng("params"), (n,), jnp.float32))
        )
        u = self.variable("batch_stats", "u", init(matrix.shape[0]))
        v = self.variable("batch_stats", "v", init(matrix.shape[1]))
        u_val, v_val = u.value, v.value
        if train:
            m = jax.lax.stop_gradient(matrix.astype(jnp.float32))
            v_val = _l2_normalize(m.T @ u_val)
            u_val = _l2_normalize(m @ v_val)
            if not self.is_initializing():
                u.value, v.value = u_val, v_val
        sigma = u_val @ (matrix.astype(jnp.float32) @ v_val)
        out = jax.lax.conv_general_dilated(
            x.astype(self.dtype),
            (kernel / sigma).astype(self.dtype),
            (1, 1),
            "VALID",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        return out + bias.astype(self.dtype)


class DiscriminatorBlock(nn.Module):
    """conv4x4 (valid) -> [InstanceNorm] -> LeakyReLU(0.2) -> [AvgPool2] (FOMM's D block)."""

    features: int
    norm: bool
    pool: bool
    sn: bool
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        if self.sn:
            x = SpectralNormConv(self.features, 4, self.dtype, self.param_dtype, name="conv")(
                x, train=train
            )
        else:
            x = nn.Conv(
                self.features,
                (4, 4),
                padding="VALID",
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name="conv",
            )(x)
        if self.norm:
            # torch InstanceNorm2d(affine=True): eps 1e-5, biased variance, float32 stats.
            x = nn.InstanceNorm(
                epsilon=1e-5,
                dtype=jnp.float32,
                param_dtype=self.param_dtype,
                use_fast_variance=False,
                name="norm",
            )(x)
        x = nn.leaky_relu(x, 0.2).astype(self.dtype)
        if self.pool:
            x = avg_pool2x2(x)
        return x


class Discriminator(nn.Module):
    """One patch discriminator (FOMM `Discriminator`)."""

    num_kp: int = 10
    block_expansion: int = 32
    num_blocks: int = 4
    max_features: int = 512
    sn: bool = True
    use_kp: bool = False
    kp_variance: float = 0.01
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, image: jax.Array, kp_value: jax.Array | None, *, train: bool):
        """image [B, H, W, 3] -> (feature maps per block, prediction map [B, h, w, 1])."""
        x = image.astype(jnp.float32)
        if self.use_kp:
            x = jnp.concatenate(
                [x, kp2gaussian(kp_value, x.shape[1], x.shape[2], self.kp_variance)], axis=-1
            )
        x = x.astype(self.dtype)
        features = []
        for i in range(self.num_blocks):
            out = min(self.max_features, self.block_expansion * 2 ** (i + 1))
            x = DiscriminatorBlock(
                out,
                norm=i != 0,
                pool=i != self.num_blocks - 1,
                sn=self.sn,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name=f"down_blocks_{i}",
            )(x, train=train)
            features.append(x)
        if self.sn:
            prediction = SpectralNormConv(1, 1, self.dtype, self.param_dtype, name="conv")(
                x, train=train
            )
        else:
            prediction = nn.Conv(
                1, (1, 1), dtype=self.dtype, param_dtype=self.param_dtype, name="conv"
            )(x)
        return features, prediction.astype(jnp.float32)


class MultiScaleDiscriminator(nn.Module):
    """One Discriminator per pyramid scale; submodules `discs_<scale name>` as FOMM's."""

    scales: Sequence[float] = (1,)
    num_kp: int = 10
    block_expansion: int = 32
    num_blocks: int = 4
    max_features: int = 512
    sn: bool = True
    use_kp: bool = False
    kp_variance: float = 0.01
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, pyramid: dict, kp_value: jax.Array | None = None, *, train: bool) -> dict:
        """Scores each pyramid level.

        Args:
          pyramid: {'prediction_<s>': [B, H*s, W*s, 3] float32 in [0, 1]} for each scale s
            (see `scale_name`).
          kp_value: [B, K, 2] keypoints, needed when use_kp.
        Returns:
          {'feature_maps_<s>': list of [B, h, w, C] per block, 'prediction_map_<s>':
           [B, h, w, 1] float32 patch scores}.
        """
        if self.use_kp and kp_value is None:
            raise ValueError("this discriminator takes keypoint heatmaps (use_kp): pass kp_value")
        out = {}
        for scale in self.scales:
            name = scale_name(scale)
            disc = Discriminator(
                self.num_kp,
                self.block_expansion,
                self.num_blocks,
                self.max_features,
                self.sn,
                self.use_kp,
                self.kp_variance,
                self.dtype,
                self.param_dtype,
                name=f"discs_{name}",
            )
            key = str(scale)
            features, prediction = disc(pyramid[f"prediction_{key}"], kp_value, train=train)
            out[f"feature_maps_{key}"] = features
            out[f"prediction_map_{key}"] = prediction
        return out
