"""FOMM's ImagePyramide: the images every multi-scale loss compares (the pyramid perceptual
loss, and the discriminator inputs of eqs. (9), (10), (12))."""

from collections.abc import Sequence

import jax

from maskrenderer_jax.models.layers import AntiAliasDownsample

FOMM_SCALES = (1, 0.5, 0.25, 0.125)


def pyramid_key(scale: float) -> str:
    """FOMM's output key `'prediction_' + str(scale)`: 1 -> 'prediction_1', 0.5 -> ..._0.5.

    The key uses `str(scale)` as given, so scales must be spelled as in the config (1, not
    1.0) for the keys to agree with the discriminator's `feature_maps_<s>` names.
    """
    return f"prediction_{scale}"


def image_pyramid(image: jax.Array, scales: Sequence[float] = FOMM_SCALES) -> dict:
    """Anti-aliased copies of an image at each scale (FOMM's ImagePyramide).

    Args:
      image: [B, H, W, C] float32 in [0, 1].
      scales: downsampling factors; 1 returns the image itself (FOMM skips the blur).
    Returns:
      {'prediction_<s>': [B, H*s, W*s, C] float32} per scale.
    """
    # AntiAliasDownsample has no parameters: its Gaussian kernel is a constant of `scale`.
    return {pyramid_key(s): AntiAliasDownsample(scale=s).apply({}, image) for s in scales}
