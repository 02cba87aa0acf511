"""The reenactment networks in Flax linen (NHWC, float32 params, `dtype` for compute)."""

from maskrenderer_jax.models.dense_motion import DenseMotionNetwork
from maskrenderer_jax.models.discriminator import MultiScaleDiscriminator
from maskrenderer_jax.models.generator import OcclusionAwareGenerator
from maskrenderer_jax.models.keypoints import KPDetector
from maskrenderer_jax.models.layers import CBAM, Hourglass, warp
from maskrenderer_jax.models.maskrenderer import (
    MaskRenderer,
    build_discriminator,
    build_model,
    init_discriminator_variables,
    init_variables,
)

__all__ = [
    "CBAM",
    "DenseMotionNetwork",
    "Hourglass",
    "KPDetector",
    "MaskRenderer",
    "MultiScaleDiscriminator",
    "OcclusionAwareGenerator",
    "build_discriminator",
    "build_model",
    "init_discriminator_variables",
    "init_variables",
    "warp",
]
