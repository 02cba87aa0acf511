"""LPIPS v0.1 (Zhang et al. 2018, richzhang/PerceptualSimilarity, pip `lpips`), net 'alex'|'vgg'.

`lpips.LPIPS(net, version='0.1', lpips=True, spatial=False)`: the ScalingLayer whitens inputs
in [-1, 1]; the ImageNet backbone (torchvision's `alexnet().features` up to relu5, or
`vgg16().features` up to relu5_3) gives five feature maps; each is unit-normalised over
channels (eps 1e-10), the squared difference between the two images goes through a learned
non-negative 1x1 conv (`lin<k>`, no bias), is averaged over space, and the five are summed.

Flax names follow the two PyTorch files the weights come from, so converters/lpips.py maps
them with one table: backbone convs are `features_<i>` (torchvision's `features.<i>.{weight,
bias}`), heads are `lin<k>/model_1` (the lpips v0.1 file's `lin<k>.model.1.weight`; index 0 of
that nn.Sequential is a Dropout, active only when training the heads, so absent here).

Without converted weights (`python -m converters.lpips`, or `converters.lpips.
pretrained_variables(net)`), `init_random` gives a random network whose distances mean
nothing: callers must say so with `warn_random_weights`.
"""

import functools
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from maskrenderer_jax.models.layers import Conv, max_pool2x2
from maskrenderer_jax.nets import random_weights

Dtype = Any

# lpips.ScalingLayer (v0.1): x -> (x - shift) / scale on RGB in [-1, 1].
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
EPS = 1e-10  # lpips.normalize_tensor


class ConvSpec(NamedTuple):
    index: int  # position in torchvision's `features` nn.Sequential
    features: int
    kernel: int = 3
    stride: int = 1
    padding: int = 1


class Backbone(NamedTuple):
    slices: tuple  # ((output name, (ConvSpec | "pool", ...)), ...); every conv is followed by ReLU
    pool: int  # max-pool window (stride 2, no padding, floor: torch MaxPool2d(pool, 2))
    min_size: int  # smallest H, W the slices accept


def _vgg(index: int, features: int) -> ConvSpec:
    return ConvSpec(index, features)


BACKBONES = {
    # torchvision alexnet().features[:12], lpips' slices [0:2], [2:5], [5:8], [8:10], [10:12].
    "alex": Backbone(
        slices=(
            ("relu1", (ConvSpec(0, 64, kernel=11, stride=4, padding=2),)),
            ("relu2", ("pool", ConvSpec(3, 192, kernel=5, padding=2))),
            ("relu3", ("pool", ConvSpec(6, 384))),
            ("relu4", (ConvSpec(8, 256),)),
            ("relu5", (ConvSpec(10, 256),)),
        ),
        pool=3,
        min_size=31,  # 31 -> 7 (conv 11/4) -> 3 (pool) -> 1 (pool)
    ),
    # torchvision vgg16().features[:30] (cfg 'D'), slices [0:4], [4:9], [9:16], [16:23], [23:30].
    "vgg": Backbone(
        slices=(
            ("relu1_2", (_vgg(0, 64), _vgg(2, 64))),
            ("relu2_2", ("pool", _vgg(5, 128), _vgg(7, 128))),
            ("relu3_3", ("pool", _vgg(10, 256), _vgg(12, 256), _vgg(14, 256))),
            ("relu4_3", ("pool", _vgg(17, 512), _vgg(19, 512), _vgg(21, 512))),
            ("relu5_3", ("pool", _vgg(24, 512), _vgg(26, 512), _vgg(28, 512))),
        ),
        pool=2,
        min_size=16,  # four 2x2 pools before relu5_3
    ),
}
NETS = tuple(BACKBONES)


def backbone(net: str) -> Backbone:
    if net not in BACKBONES:
        raise ValueError(f"LPIPS net must be one of {NETS}; got {net!r}")
    return BACKBONES[net]


def conv_specs(net: str) -> tuple[ConvSpec, ...]:
    """The backbone's convs in order (their `index` names the torchvision key)."""
    return tuple(layer for _, layers in backbone(net).slices for layer in layers if layer != "pool")


def layer_names(net: str) -> tuple[str, ...]:
    return tuple(name for name, _ in backbone(net).slices)


def backbone_features(x: jax.Array, net: str, dtype: Dtype, param_dtype: Dtype) -> list:
    """The backbone's slice outputs (`layer_names(net)`), its convs (`features_<i>`) created in
    the calling compact module: the one definition of the ImageNet AlexNet/VGG16 features, used
    by LPIPS and by nets/vgg16.py (the perceptual loss)."""
    spec = backbone(net)
    outputs = []
    for _, layers in spec.slices:
        for layer in layers:
            if layer == "pool":
                # 2x2 not as reduce_window: its gradient (select_and_scatter) is a scatter on
                # XLA:CPU with four int32 index maps of the input's size.
                if spec.pool == 2:
                    x = max_pool2x2(x)
                else:
                    x = nn.max_pool(x, (spec.pool,) * 2, strides=(2, 2), padding="VALID")
                continue
            name = f"features_{layer.index}"
            if layer.stride == 1 and layer.padding == layer.kernel // 2:
                conv = Conv(
                    layer.features, layer.kernel, dtype=dtype, param_dtype=param_dtype, name=name
                )
            else:  # AlexNet's conv1: 11x11, stride 4, padding 2
                conv = nn.Conv(
                    layer.features,
                    (layer.kernel,) * 2,
                    strides=(layer.stride,) * 2,
                    padding=((layer.padding,) * 2,) * 2,
                    dtype=dtype,
                    param_dtype=param_dtype,
                    name=name,
                )
            x = nn.relu(conv(x))
        outputs.append(x)
    return outputs


def _unit_normalize(x: jax.Array) -> jax.Array:
    # lpips.normalize_tensor: the eps is added to the norm, not under the square root.
    return x / (jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True)) + EPS)


class NetLinLayer(nn.Module):
    """lpips.NetLinLayer in eval mode: a 1x1 conv to one channel, no bias."""

    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        # `model_1`: torch's nn.Sequential(Dropout, Conv2d) puts the conv at index 1.
        return nn.Conv(1, (1, 1), use_bias=False, param_dtype=self.param_dtype, name="model_1")(x)


class LPIPS(nn.Module):
    """LPIPS v0.1 distance between two image batches (lower = more similar)."""

    net: str = "alex"
    dtype: Dtype = jnp.float32  # the backbone's compute dtype; the distance is float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images0: jax.Array, images1: jax.Array) -> jax.Array:
        """Perceptual distance of each pair.

        Args:
          images0, images1: [B, H, W, 3] float RGB in [0, 1] (H, W >= 31 for 'alex', >= 16
            for 'vgg'). Mapped to [-1, 1] here, as `lpips.LPIPS.forward(..., normalize=True)`
            does; feed [0, 1] images, not lpips' default [-1, 1].
        Returns:
          [B] float32 distances, >= 0 with the real (non-negative) heads; 0 for equal images.
        """
        spec = backbone(self.net)
        if images0.shape != images1.shape or images0.ndim != 4 or images0.shape[-1] != 3:
            raise ValueError(
                f"LPIPS takes two [B, H, W, 3] batches of one shape; got {images0.shape} and "
                f"{images1.shape}"
            )
        if min(images0.shape[1:3]) < spec.min_size:
            raise ValueError(
                f"LPIPS({self.net!r}) needs H, W >= {spec.min_size}; got {images0.shape}"
            )
        batch = images0.shape[0]
        x = jnp.concatenate([images0, images1], axis=0).astype(jnp.float32)  # one backbone pass
        x = (2.0 * x - 1.0 - jnp.asarray(SHIFT)) / jnp.asarray(SCALE)
        distance = jnp.zeros((batch,), jnp.float32)
        outputs = backbone_features(x.astype(self.dtype), self.net, self.dtype, self.param_dtype)
        for k, features in enumerate(outputs):
            features = _unit_normalize(features.astype(jnp.float32))
            features0, features1 = features[:batch], features[batch:]
            # Fused, XLA contracts one side of f0 * r0 - f1 * r1 (r = 1 / norm) into an FMA, so
            # equal features would differ by ~1e-8; torch's exact 0 for them is kept here.
            diff = jnp.where(features0 == features1, 0.0, features0 - features1) ** 2
            per_pixel = NetLinLayer(self.param_dtype, name=f"lin{k}")(diff)  # [B, h, w, 1]
            distance = distance + jnp.mean(per_pixel, axis=(1, 2, 3))
        return distance


@functools.partial(jax.jit, static_argnames="net")  # module level: one compile per shape and net
def distance(variables: dict, images0: jax.Array, images1: jax.Array, net: str) -> jax.Array:
    """LPIPS(net) distances [B] float32 of [B, H, W, 3] RGB batches in [0, 1]."""
    return LPIPS(net=net).apply(variables, images0, images1)


def init_random(rng: jax.Array, net: str = "alex", *, param_dtype: Dtype = jnp.float32) -> dict:
    """Randomly initialised {'params'} (flax's default initialisers) for `LPIPS(net).apply`.

    Only for running without converted weights: call `warn_random_weights` alongside.
    """
    size = backbone(net).min_size
    x = jnp.zeros((1, size, size, 3), jnp.float32)
    # Jitted: one compile; eagerly, every initialiser shape compiled on its own (~20 s on CPU).
    return jax.jit(LPIPS(net=net, param_dtype=param_dtype).init)(rng, x, x)


def warn_random_weights(net: str = "alex") -> str:
    """Logs (logging.WARNING) and returns the message that LPIPS(net) runs on random weights."""
    return random_weights.warn_random_weights(
        f"LPIPS({net})",
        "converters.lpips",
        "its distances are meaningless and not comparable to published LPIPS numbers.",
    )
