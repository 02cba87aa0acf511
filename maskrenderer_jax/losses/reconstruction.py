"""Pixel reconstruction loss: mean |prediction - target| at full resolution.

Not in FOMM's or MaskRenderer's objective (both reconstruct through the perceptual pyramid
only; `loss.reconstruction` defaults to 0). The perceptual loss is nearly blind to a colour
offset and weighs a smoothed static background little; an L1 on the pixels asks for the
colours themselves (docs/DESIGN_NOTES.md, "A demo that learns").
"""

import jax
import jax.numpy as jnp


def reconstruction_loss(prediction: jax.Array, target: jax.Array) -> jax.Array:
    """mean |prediction - sg(target)| over batch, pixels and channels (unweighted).

    One full-resolution term rather than one per pyramid scale: the pyramid's coarser copies
    are low-passed versions of the same difference, so summing them would only weigh low
    frequencies more; the full-resolution mean already counts a colour offset in full.

    Args:
      prediction, target: [B, H, W, C] in [0, 1].
    Returns:
      scalar float32.
    """
    target = jax.lax.stop_gradient(target)
    return jnp.mean(jnp.abs(prediction.astype(jnp.float32) - target.astype(jnp.float32)))
