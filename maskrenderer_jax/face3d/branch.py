"""The 3D branch's inputs to the dense motion network: the motion field M_3D with its
coverage, and the rendered reenacted face, from the 3DMM coefficients of a source and a driving
frame.

Frames may be horizontally flipped (training augmentation) with mirrored coefficients
(`morphable_model.mirror_coefficients`): pose, translation and lighting mirror exactly, but
id/exp/tex cannot. So each set is unmirrored, the faces are rendered in the original frames,
and the outputs are flipped into the frames the network sees: for a flipped driving frame the
columns are reversed (the fields live on driving pixels), for a flipped source the motion's x
(a source position) changes sign.
"""

import jax
import jax.numpy as jnp

from maskrenderer_jax.face3d import morphable_model as mm
from maskrenderer_jax.face3d.render import motion_field, reenact_coefficients, render
from maskrenderer_jax.models.layers import coordinate_grid


def _unmirror(coeffs: jax.Array, flipped: jax.Array | None) -> jax.Array:
    if flipped is None:
        return coeffs
    return jnp.where(flipped[:, None], mm.mirror_coefficients(coeffs), coeffs)


def _flip_columns(x: jax.Array, flipped: jax.Array | None) -> jax.Array:
    if flipped is None:
        return x
    mask = flipped.reshape((-1,) + (1,) * (x.ndim - 1))
    return jnp.where(mask, x[:, :, ::-1], x)


def branch_inputs(
    model: mm.MorphableModel,
    source_coeffs: jax.Array,
    driving_coeffs: jax.Array,
    image_size: int,
    *,
    source_flipped: jax.Array | None = None,
    driving_flipped: jax.Array | None = None,
    driving_initial_coeffs: jax.Array | None = None,
) -> dict:
    """M_3D, its coverage and the rendered face of the source reenacted by the driver.

    The reenacted coefficients keep the source's id, tex and lighting and take the driver's
    exp, angle and trans (relative to `driving_initial_coeffs` if given, as in FOMM's relative
    animation). No gradient flows: the 3D branch is frozen.

    Args:
      model: the 3DMM.
      source_coeffs, driving_coeffs: [B, 257] float32 of the frames as the network sees them.
      image_size: static S.
      source_flipped, driving_flipped: [B] bool, frames flipped horizontally with mirrored
        coefficients; None: not flipped (e.g. regressed from the flipped image itself).
      driving_initial_coeffs: [B, 257] (unflipped frames) for relative motion, or None.
    Returns:
      {'motion_3d': [B, S, S, 2] grid (x, y) in [-1, 1] (identity off the face),
       'coverage_3d': [B, S, S] float32 {0, 1}, 'rendered_3d': [B, S, S, 3] in [0, 1]}.
    """
    source = _unmirror(source_coeffs.astype(jnp.float32), source_flipped)
    driving = _unmirror(driving_coeffs.astype(jnp.float32), driving_flipped)
    target = reenact_coefficients(source, driving, driving_initial_coeffs)
    face = render(model, target, image_size, antialias=True)
    field = motion_field(model, source, face["fragments"], image_size)  # rasterized once
    motion = field["motion"]
    if source_flipped is not None:  # x is a source position
        x_sign = jnp.where(source_flipped, -1.0, 1.0)[:, None, None]
        motion = jnp.stack([motion[..., 0] * x_sign, motion[..., 1]], axis=-1)
    motion = _flip_columns(motion, driving_flipped)
    coverage = _flip_columns(field["coverage"], driving_flipped)
    identity = jnp.broadcast_to(coordinate_grid(image_size, image_size), motion.shape)
    out = {
        "motion_3d": jnp.where(coverage[..., None] > 0, motion, identity),
        "coverage_3d": coverage,
        "rendered_3d": _flip_columns(jnp.clip(face["image"], 0.0, 1.0), driving_flipped),
    }
    return jax.lax.stop_gradient(out)
