"""Exact, batched triangle rasterizer in pure JAX, in nvdiffrast's three passes.

  * `rasterize` (visibility.py): per pixel the nearest covering triangle by an exact z-buffer
    (no gradient), its depth, and the perspective-correct barycentrics of the pixel centre in
    it, recomputed from the vertex positions with jnp ops so that gradients reach the
    vertices (the triangle id is a constant): `Fragments`.
  * `interpolate` (interpolation.py): vertex attributes at the pixels, from the fragments'
    barycentrics (gradients reach the attributes and, through the barycentrics, the
    vertices).
  * `antialias` (antialiasing.py), and `silhouette` (anti-aliased coverage): blend across
    silhouette edges (nvdiffrast's analytic anti-aliasing), which gives the coverage
    gradients w.r.t. vertex positions.

A mesh is rasterized once per image; every consumer of its visibility takes the `Fragments`.

Conventions:
  * `vertices[..., :2]` are continuous image coordinates in pixels, x to the right, y DOWN; the
    image spans [0, W] x [0, H] and the centre of pixel (row i, column j) is (j + 0.5, i + 0.5).
  * `vertices[..., 2]` is the positive view depth z (distance along the optical axis); smaller
    is nearer. Depth is perspective-correct: with screen-space barycentrics b_i,
    1/z = sum_i b_i / z_i.
  * A pixel is covered when its centre is inside the triangle. A centre exactly on an edge
    belongs to the triangle for which that edge is a top edge (horizontal, triangle below it)
    or a left edge (triangle to its right): Direct3D's top-left rule, i.e. the sample point is
    nudged right and down by an infinitesimal. Edge functions are evaluated with each edge
    oriented from its lower to its higher vertex index, so the two triangles of a shared edge
    compute the same expression, negated: a watertight mesh covers such a centre exactly once.
  * Front-facing = (v0, v1, v2) run COUNTER-CLOCKWISE as seen on the screen (OpenGL's
    default): with y down, the signed area (x1-x0)(y2-y0) - (y1-y0)(x2-x0) is negative. A
    triangle whose right-hand normal points at the camera projects that way.
  * Skipped triangles (they cover nothing; never a wrong image): a vertex with z <= znear
    (behind the camera: clip the mesh beforehand if such triangles must be drawn), a
    non-finite coordinate (NaN / inf), zero screen area (degenerate), and back faces when
    `cull_backfaces`. Triangles crossing the image border are clipped to the image. Equal
    depths resolve to the lowest triangle id.
"""

from maskrenderer_jax.face3d.rasterizer.antialiasing import (
    antialias,
    silhouette,
    triangle_neighbors,
)
from maskrenderer_jax.face3d.rasterizer.interpolation import interpolate
from maskrenderer_jax.face3d.rasterizer.visibility import Fragments, rasterize

__all__ = ["Fragments", "antialias", "interpolate", "rasterize", "silhouette", "triangle_neighbors"]
