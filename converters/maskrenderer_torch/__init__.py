"""PyTorch implementation of MaskRenderer's generator side and discriminator (FOMM's networks
are its configuration without the extras), for using exported weights outside JAX:

    from converters import maskrenderer_torch
    model, discriminator, config = maskrenderer_torch.load("model.safetensors")

One file per network (keypoints, dense_motion, generator, discriminator) over shared blocks
(layers), wired in maskrenderer; NCHW, float32, module attribute names = the export's tensor
names (FOMM's for FOMM's parts). Needs torch and safetensors (torch is not a dependency of the
JAX package: requirements-dev.txt pins the CPU build).
"""

from converters.maskrenderer_torch.dense_motion import DenseMotionNetwork
from converters.maskrenderer_torch.discriminator import Discriminator, MultiScaleDiscriminator
from converters.maskrenderer_torch.generator import OcclusionAwareGenerator
from converters.maskrenderer_torch.keypoints import KPDetector
from converters.maskrenderer_torch.maskrenderer import Exported, MaskRenderer, build, load

__all__ = [
    "DenseMotionNetwork",
    "Discriminator",
    "Exported",
    "KPDetector",
    "MaskRenderer",
    "MultiScaleDiscriminator",
    "OcclusionAwareGenerator",
    "build",
    "load",
]
