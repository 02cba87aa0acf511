"""Training losses of MaskRenderer (eqs. (5)-(12)): FOMM's perceptual pyramid, LSGAN and
feature matching, TPS equivariance; TPSMM's warping loss; the identity triplet loss; a pixel
reconstruction L1 (not in the reference objectives, weight 0 by default).

All are pure, jit-able functions reducing in float32; scalar loss weights are the caller's.
"""

from maskrenderer_jax.losses.adversarial import (
    discriminator_gan_loss,
    feature_matching_loss,
    generator_gan_loss,
)
from maskrenderer_jax.losses.equivariance import (
    TPSTransform,
    equivariance_losses,
    random_tps_transform,
    reflect_coordinates,
    tps_transform,
)
from maskrenderer_jax.losses.perceptual import perceptual_loss
from maskrenderer_jax.losses.pyramid import FOMM_SCALES, image_pyramid, pyramid_key
from maskrenderer_jax.losses.reconstruction import reconstruction_loss
from maskrenderer_jax.losses.triplet import (
    identity_triplet_loss,
    l2_normalize,
    pairwise_distance,
    triplet_loss,
)
from maskrenderer_jax.losses.warping import warping_loss

__all__ = [
    "FOMM_SCALES",
    "TPSTransform",
    "discriminator_gan_loss",
    "equivariance_losses",
    "feature_matching_loss",
    "generator_gan_loss",
    "identity_triplet_loss",
    "image_pyramid",
    "l2_normalize",
    "pairwise_distance",
    "perceptual_loss",
    "pyramid_key",
    "random_tps_transform",
    "reconstruction_loss",
    "reflect_coordinates",
    "tps_transform",
    "triplet_loss",
    "warping_loss",
]
