"""VGG19 feature extractor for FOMM's pyramid perceptual loss (FOMM modules/model.py `Vgg19`).

torchvision's `vgg19().features` (no BatchNorm) cut after relu5_1 (index 29): the 13 convs at
indices 0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28. Convs are named `features_<index>`, so
converters/torch_layout.py maps them to torchvision's `features.<index>.{weight,bias}`
mechanically. Inputs are RGB in [0, 1]; like FOMM's `Vgg19`, the module applies the ImageNet
mean/std itself.

Without converted weights (`python -m converters.vgg19`), `init_random` gives a randomly
initialised network and the perceptual loss measures nothing useful: callers must say so with
`warn_random_weights`.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from maskrenderer_jax.models.layers import Conv, max_pool2x2
from maskrenderer_jax.nets import random_weights

Dtype = Any

# FOMM's Vgg19: torchvision's ImageNet statistics, inputs in [0, 1].
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# (output name, [(torchvision index of a conv, its output channels), ...]) per FOMM slice; every
# slice but the first starts with a 2x2 max pool, every conv is followed by a ReLU.
SLICES = (
    ("relu1_1", ((0, 64),)),
    ("relu2_1", ((2, 64), "pool", (5, 128))),
    ("relu3_1", ((7, 128), "pool", (10, 256))),
    ("relu4_1", ((12, 256), (14, 256), (16, 256), "pool", (19, 512))),
    ("relu5_1", ((21, 512), (23, 512), (25, 512), "pool", (28, 512))),
)
LAYERS = tuple(name for name, _ in SLICES)


class Vgg19(nn.Module):
    """VGG19 activations relu1_1 .. relu5_1 (FOMM's perceptual-loss features)."""

    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array) -> tuple[jax.Array, ...]:
        """Five feature maps of an image batch.

        Args:
          images: [B, H, W, 3] float RGB in [0, 1] (any H, W >= 16; FOMM feeds its pyramid of
            256, 128, 64, 32 px frames).
        Returns:
          A tuple in `LAYERS` order (relu1_1, relu2_1, relu3_1, relu4_1, relu5_1) of
          [B, H / 2**i, W / 2**i, (64, 128, 256, 512, 512)[i]] in `dtype`, i = 0..4 (sizes
          floored as torch's MaxPool2d(2, 2) floors them).
        """
        mean = jnp.asarray(IMAGENET_MEAN, jnp.float32)
        std = jnp.asarray(IMAGENET_STD, jnp.float32)
        x = ((images.astype(jnp.float32) - mean) / std).astype(self.dtype)
        outputs = []
        for _, layers in SLICES:
            for layer in layers:
                if layer == "pool":
                    x = max_pool2x2(x)
                    continue
                index, channels = layer
                x = Conv(
                    channels,
                    dtype=self.dtype,
                    param_dtype=self.param_dtype,
                    name=f"features_{index}",
                )(x)
                x = nn.relu(x)
            outputs.append(x)
        return tuple(outputs)


def init_random(rng: jax.Array, *, param_dtype: Dtype = jnp.float32) -> dict:
    """Randomly initialised {'params'} (flax's default initialisers) for `Vgg19().apply`.

    Only for running without converted weights: call `warn_random_weights` alongside.
    """
    model = Vgg19(param_dtype=param_dtype)
    # The parameters do not depend on the input size; a small input keeps init cheap, and
    # eager init skips compiling a graph that runs once.
    return model.init(rng, jnp.zeros((1, 16, 16, 3), jnp.float32))


def warn_random_weights() -> str:
    """Logs (logging.WARNING) and returns the message that VGG19 runs on random weights."""
    return random_weights.warn_random_weights(
        "VGG19",
        "converters.vgg19",
        "the perceptual loss is then meaningless and results are not comparable to "
        "FOMM/MaskRenderer.",
    )
