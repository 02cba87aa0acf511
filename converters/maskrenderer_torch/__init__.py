"""PyTorch implementation of the reenactment networks, for using exported weights outside JAX.

One file per network (keypoints, dense_motion, generator, discriminator) over shared blocks
(layers); NCHW, float32, module attribute names = FOMM's state-dict names. Needs torch (not a
dependency of the JAX package: requirements-dev.txt pins the CPU build).
"""

from converters.maskrenderer_torch.dense_motion import DenseMotionNetwork
from converters.maskrenderer_torch.discriminator import (
    DiscDownBlock2d,
    Discriminator,
    MultiScaleDiscriminator,
)
from converters.maskrenderer_torch.generator import OcclusionAwareGenerator
from converters.maskrenderer_torch.keypoints import KPDetector

__all__ = [
    "DenseMotionNetwork",
    "DiscDownBlock2d",
    "Discriminator",
    "KPDetector",
    "MultiScaleDiscriminator",
    "OcclusionAwareGenerator",
    "build_fomm",
]


def build_fomm(config):
    """Build (kp_detector, generator, discriminator) in eval mode.

    `config` is FOMM's yaml ``model_params`` dict (keys ``common_params``,
    ``kp_detector_params``, ``generator_params``, ``discriminator_params``);
    a full yaml dict with a ``model_params`` entry is accepted too.
    """
    if "model_params" in config:
        config = config["model_params"]
    common = dict(config.get("common_params", {}))
    kp_detector = KPDetector(**config["kp_detector_params"], **common)
    generator = OcclusionAwareGenerator(**config["generator_params"], **common)
    discriminator = MultiScaleDiscriminator(**config.get("discriminator_params", {}), **common)
    return kp_detector.eval(), generator.eval(), discriminator.eval()
