"""LSGAN losses and discriminator feature matching (MaskRenderer eqs. (9), (10), (12)), as
FOMM's GeneratorFullModel / DiscriminatorFullModel compute them.

The discriminator outputs are MultiScaleDiscriminator dicts: {'feature_maps_<s>': list of
[B, h, w, C], 'prediction_map_<s>': [B, h, w, 1]}. Scalar loss weights (FOMM's
`generator_gan`, `discriminator_gan`) are the caller's; the per-block feature-matching weights
are an argument because FOMM skips blocks whose weight is 0.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp

_MAP = "prediction_map_"
_FEATS = "feature_maps_"


def _scales(maps: dict, prefix: str) -> list[str]:
    return [key[len(prefix) :] for key in maps if key.startswith(prefix)]


def generator_gan_loss(maps_fake: dict) -> jax.Array:
    """Eq. (9): sum over discriminator scales of mean((1 - D(fake))^2) (LSGAN, target 1).

    Args:
      maps_fake: discriminator outputs for the generated pyramid.
    Returns:
      scalar float32.
    """
    total = jnp.zeros((), jnp.float32)
    for s in _scales(maps_fake, _MAP):
        total = total + jnp.mean((1.0 - maps_fake[_MAP + s].astype(jnp.float32)) ** 2)
    return total


def discriminator_gan_loss(maps_real: dict, maps_fake: dict) -> jax.Array:
    """Eq. (12): sum over scales of mean((1 - D(real))^2 + D(fake)^2) (LSGAN, targets 1 / 0).

    FOMM averages the sum of the two squared maps, i.e. mean(real term) + mean(fake term) for
    equal map shapes. The caller passes D applied to `stop_gradient(fake)` (FOMM detaches the
    prediction before the discriminator step).

    Returns:
      scalar float32.
    """
    total = jnp.zeros((), jnp.float32)
    for s in _scales(maps_real, _MAP):
        real = maps_real[_MAP + s].astype(jnp.float32)
        fake = maps_fake[_MAP + s].astype(jnp.float32)
        total = total + jnp.mean((1.0 - real) ** 2 + fake**2)
    return total


def feature_matching_loss(
    maps_real: dict, maps_fake: dict, weights: Sequence[float] = (10.0,) * 4
) -> jax.Array:
    """Eq. (10): sum over scales and blocks i of w_i mean|D_i(real) - D_i(fake)|, as FOMM.

    FOMM does not detach the real features: in the generator step only generator parameters
    receive the gradient, and the real features do not depend on them, so none is needed.

    Args:
      maps_real, maps_fake: discriminator outputs for the real and generated pyramids.
      weights: one per discriminator block (FOMM: [10]*4); blocks with weight 0 are skipped,
        blocks beyond `len(weights)` are ignored (FOMM's zip/enumerate).
    Returns:
      scalar float32 (already weighted).
    """
    total = jnp.zeros((), jnp.float32)
    for s in _scales(maps_real, _FEATS):
        pairs = zip(maps_real[_FEATS + s], maps_fake[_FEATS + s], strict=True)
        for weight, (a, b) in zip(weights, pairs, strict=False):
            if weight == 0:
                continue
            diff = a.astype(jnp.float32) - b.astype(jnp.float32)
            total = total + weight * jnp.mean(jnp.abs(diff))
    return total
