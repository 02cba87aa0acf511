"""Anti-aliasing: blending across silhouette edges (nvdiffrast's analytic anti-aliasing),
which gives the coverage gradients w.r.t. vertex positions that the hard visibility lacks."""

import functools

import jax
import jax.numpy as jnp
from jax import lax

from maskrenderer_jax.face3d.rasterizer.visibility import Fragments, pixel_corners


def _cross(a, b):
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


@jax.jit
def triangle_neighbors(triangles: jax.Array) -> jax.Array:
    """[T, 3] int32 -> [T, 3] int32: the triangle across edge k (v_k, v_k+1), -1 on a border.

    Mesh topology for `antialias`; static for a mesh, so compute it once outside the training
    step. An edge shared by more than two triangles pairs them up in sorted order.
    """
    triangles = jnp.asarray(triangles, jnp.int32)
    start, end = triangles.reshape(-1), jnp.roll(triangles, -1, axis=1).reshape(-1)
    edge = jnp.arange(start.shape[0], dtype=jnp.int32)
    low, high, edge = lax.sort((jnp.minimum(start, end), jnp.maximum(start, end), edge), num_keys=2)
    same = (low[1:] == low[:-1]) & (high[1:] == high[:-1])
    no = jnp.zeros((1,), bool)
    partner = jnp.where(
        jnp.concatenate([same, no]),
        jnp.roll(edge, -1),
        jnp.where(jnp.concatenate([no, same]), jnp.roll(edge, 1), -1),
    )
    neighbor = jnp.where(partner >= 0, partner // 3, -1)
    return jnp.zeros_like(edge).at[edge].set(neighbor).reshape(triangles.shape)


def _horizontal_blend(color, vertices, triangles, ids, depth, centre, silhouette_edge):
    """`antialias`'s change to `color` from the pairs (x, x+1); [B, H, W, C]."""
    pick = lambda mask, a, b: jnp.where(mask.reshape(mask.shape + (1,) * (a.ndim - 3)), a, b)
    left_nearer = depth[:, :, :-1] <= depth[:, :, 1:]
    near = lambda x: pick(left_nearer, x[:, :, :-1], x[:, :, 1:])
    far = lambda x: pick(left_nearer, x[:, :, 1:], x[:, :, :-1])
    near_id = near(ids)
    paired = (ids[:, :, :-1] != ids[:, :, 1:]) & (near_id >= 0)
    corners, _ = pixel_corners(vertices, triangles, jnp.where(paired, near_id, -1))
    v = [corners[..., k, :2] for k in range(3)]
    orient = jnp.sign(lax.stop_gradient(_cross(v[1] - v[0], v[2] - v[0])))
    edges = lambda p: jnp.stack(
        [orient * _cross(v[(k + 1) % 3] - v[k], p - v[k]) for k in range(3)], axis=-1
    )
    e_near, e_far = edges(near(centre)), edges(far(centre))
    crosses = (e_far < 0) & (e_near >= 0)
    # Where the segment near -> far centre leaves the triangle, s in [0, 1] along it.
    s = jnp.where(crosses, e_near / jnp.where(crosses, e_near - e_far, 1.0), jnp.inf)
    exit_edge = jnp.argmin(s, axis=-1)
    s = jnp.take_along_axis(s, exit_edge[..., None], axis=-1)[..., 0]
    batch_index = jnp.arange(ids.shape[0]).reshape(-1, 1, 1)
    blend = paired & jnp.any(crosses, axis=-1)
    blend &= silhouette_edge[batch_index, jnp.maximum(near_id, 0), exit_edge]
    s = jnp.where(blend, s, 0.5)
    # 1-D box filter: the near surface covers [0, s) of the segment; the pixels meet at 1/2.
    to_far = jnp.maximum(s - 0.5, 0.0)[..., None] * (near(color) - far(color))
    to_near = jnp.maximum(0.5 - s, 0.0)[..., None] * (far(color) - near(color))
    pad = lambda x, before: jnp.pad(x, ((0, 0), (0, 0), (before, 1 - before), (0, 0)))
    return pad(pick(left_nearer, to_near, to_far), 0) + pad(pick(left_nearer, to_far, to_near), 1)


@jax.jit
def antialias(
    color: jax.Array,
    fragments: Fragments,
    vertices: jax.Array,
    triangles: jax.Array,
    neighbors: jax.Array | None = None,
) -> jax.Array:
    """Analytic anti-aliasing across silhouette edges (nvdiffrast's `antialias`).

    For each horizontally or vertically adjacent pixel pair showing different surfaces, the
    nearer pixel's triangle is followed towards the other pixel centre; if it leaves through a
    silhouette edge (a mesh border, or an edge between a front- and a back-facing triangle),
    the colours are blended by how far the edge lies past the midpoint between the centres (a
    1-D box filter). The crossing point is computed from `vertices` with jnp ops, which gives
    the gradients w.r.t. vertex positions that the hard visibility lacks. Assumes consistently
    oriented triangles (shared edges run in opposite directions).

    Args:
      color: [B, H, W, C] float32, e.g. `interpolate`'s output composited on a background.
      fragments: `rasterize`'s output (triangle ids and depths).
      vertices: [B, V, 3] float32, the ones given to `rasterize`.
      triangles: [T, 3] int32, the ones given to `rasterize`.
      neighbors: [T, 3] int32 `triangle_neighbors(triangles)`; computed here if None.
    Returns:
      [B, H, W, C] float32, the anti-aliased colour.
    """
    if neighbors is None:
        neighbors = triangle_neighbors(triangles)
    triangles = jnp.asarray(triangles, jnp.int32)
    corners = lax.stop_gradient(vertices)[:, triangles, :2]  # [B, T, 3, 2]
    front = _cross(corners[..., 1, :] - corners[..., 0, :], corners[..., 2, :] - corners[..., 0, :])
    front = front > 0
    silhouette_edge = (neighbors < 0) | (front[:, jnp.maximum(neighbors, 0)] != front[..., None])

    batch, height, width = fragments.triangle_id.shape
    ids = fragments.triangle_id
    depth = jnp.where(ids >= 0, fragments.depth, jnp.inf)
    rows = jnp.arange(height, dtype=jnp.float32) + 0.5
    cols = jnp.arange(width, dtype=jnp.float32) + 0.5
    centre = jnp.stack(jnp.broadcast_arrays(cols[None, :], rows[:, None]), axis=-1)
    centre = jnp.broadcast_to(centre, (batch, height, width, 2))
    blend = functools.partial(
        _horizontal_blend, vertices=vertices, triangles=triangles, silhouette_edge=silhouette_edge
    )
    out = color + blend(color, ids=ids, depth=depth, centre=centre)
    # Vertical pairs are horizontal ones of the transposed image (centres keep their (x, y)).
    swap = lambda x: jnp.swapaxes(x, 1, 2)
    vertical = blend(swap(color), ids=swap(ids), depth=swap(depth), centre=swap(centre))
    return out + swap(vertical)


@jax.jit
def silhouette(
    fragments: Fragments,
    vertices: jax.Array,
    triangles: jax.Array,
    neighbors: jax.Array | None = None,
) -> jax.Array:
    """Anti-aliased coverage [B, H, W] float32 in [0, 1], differentiable w.r.t. the vertex
    positions near silhouette edges (`antialias` of the hard mask)."""
    mask = (fragments.triangle_id >= 0).astype(jnp.float32)[..., None]
    return antialias(mask, fragments, vertices, triangles, neighbors)[..., 0]
