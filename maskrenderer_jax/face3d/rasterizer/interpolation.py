"""Interpolation: vertex attributes at the pixels, weighted by the fragments' barycentrics."""

import jax
import jax.numpy as jnp

from maskrenderer_jax.face3d.rasterizer.visibility import Fragments, corner_rows


@jax.jit
def interpolate(attributes: jax.Array, fragments: Fragments, triangles: jax.Array) -> jax.Array:
    """Per-pixel perspective-correct interpolation of vertex attributes.

    Differentiable w.r.t. `attributes`, and w.r.t. the vertices given to `rasterize` through
    `fragments.barycentrics`.

    Args:
      attributes: [B, V, C] (or [V, C], shared by the batch) float32, of the vertices given
        to `rasterize` (or of another mesh with the same topology).
      fragments: `rasterize`'s output.
      triangles: [T, 3] int32, the ones given to `rasterize`.
    Returns:
      [B, H, W, C] float32, zeros where no triangle.
    """
    batch = fragments.triangle_id.shape[0]
    num_vertices = attributes.shape[-2]
    attributes = jnp.broadcast_to(attributes, (batch, *attributes.shape[-2:]))
    rows = corner_rows(triangles, fragments.triangle_id, num_vertices)
    values = attributes.reshape(batch * num_vertices, -1)[rows]  # [B, H, W, 3, C]
    weights = fragments.barycentrics
    return sum(weights[..., k, None] * values[..., k, :] for k in range(3))
