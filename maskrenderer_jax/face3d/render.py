"""Rendering the 3DMM: lit colour image, coverage and depth of a coefficient set, reenacted
coefficients, and the 3D motion field M_3D that the dense motion network takes.

Screen convention: Deep3DFace renders with nvdiffrast, whose continuous pixel coordinates put
the centre of pixel (row i, column j) at (j + 0.5, i + 0.5); with the projection (u, v-up) of
`morphable_model.project`, the vertex lands at x = u, y = S - v for an S x S image. (Deep3DFace's
saved landmarks use the row index S - 1 - v, half a pixel from the rendered image: a quirk of the
reference we keep in `morphable_model.image_coordinates` and do not propagate here.)
"""

import jax
import jax.numpy as jnp

from maskrenderer_jax.face3d import morphable_model as mm
from maskrenderer_jax.face3d import rasterizer
from maskrenderer_jax.models.layers import coordinate_grid

ZNEAR = 5.0  # Deep3DFace's renderer: znear 5, zfar 15 around the camera at distance 10


def screen_vertices(vertices: jax.Array, image_size: int, model: mm.MorphableModel) -> jax.Array:
    """Camera-space vertices [B, N, 3] -> rasterizer input [B, N, 3]: (x, y) continuous pixels
    (y down, pixel centres at +0.5) and the view depth z'."""
    focal, center = mm.camera_for_size(image_size, model.focal, model.center, model.image_size)
    uv = mm.project(vertices, focal, center)
    return jnp.stack([uv[..., 0], image_size - uv[..., 1], vertices[..., 2]], axis=-1)


def pixels_to_grid(xy: jax.Array, image_size: int) -> jax.Array:
    """Continuous pixel coordinates (centres at +0.5) -> the FOMM grid, align_corners=True:
    the centre of pixel j maps to 2 j / (S - 1) - 1."""
    return 2.0 * (xy - 0.5) / (image_size - 1) - 1.0


def _rasterize_face(
    model: mm.MorphableModel, screen: jax.Array, image_size: int
) -> rasterizer.Fragments:
    """The face mesh at `screen_vertices`, as Deep3DFace's renderer draws it (back faces
    culled, clipped at its near plane)."""
    return rasterizer.rasterize(
        screen, model.triangles, image_size, image_size, cull_backfaces=True, znear=ZNEAR
    )


def render(
    model: mm.MorphableModel, coeffs: jax.Array, image_size: int, *, antialias: bool = True
) -> dict:
    """Renders the lit face of each coefficient set.

    Args:
      model: the 3DMM (pass it as a jit argument).
      coeffs: [B, 257] float32.
      image_size: static output size S (the camera is scaled from Deep3DFace's 224).
      antialias: blend silhouette edges (gives gradients w.r.t. the silhouette).
    Returns:
      {'image': [B, S, S, 3] float32 lit colour, black background (not clipped, as
       Deep3DFace), 'mask': [B, S, S] float32 coverage in [0, 1] (hard 0/1 without
       antialias), 'depth': [B, S, S] view depth, 0 off the face, 'fragments' (the
       rasterizer's, e.g. for `motion_field`), 'screen': [B, N, 3] rasterizer vertices,
       'landmarks': [B, 68, 2] continuous pixels (x, y down), plus `reconstruct`'s outputs}.
    """
    recon = mm.reconstruct(model, coeffs, image_size)
    screen = screen_vertices(recon["vertices"], image_size, model)
    fragments = _rasterize_face(model, screen, image_size)
    attributes = jnp.concatenate([recon["colors"], jnp.ones_like(recon["colors"][..., :1])], -1)
    shaded = rasterizer.interpolate(attributes, fragments, model.triangles)
    if antialias:
        shaded = rasterizer.antialias(
            shaded, fragments, screen, model.triangles, model.triangle_neighbors
        )
    return {
        **recon,
        "image": shaded[..., :3],
        "mask": shaded[..., 3],
        "depth": fragments.depth,
        "fragments": fragments,
        "screen": screen,
        "landmarks": screen[:, model.keypoints, :2],
    }


def reenact_coefficients(
    source: jax.Array, driving: jax.Array, driving_initial: jax.Array | None = None
) -> jax.Array:
    """The source's identity, texture and lighting with the driver's motion ([B, 257] each).

    Absolute (driving_initial None): exp, angle, trans of the driver. Relative: exp, angle,
    trans = S + (D - D0), the 3DMM analogue of FOMM's relative keypoints.
    """
    out = jnp.asarray(source)
    for name, start, stop in mm.COEFF_GROUPS:
        if name not in ("exp", "angle", "trans"):
            continue
        motion = driving[:, start:stop]
        if driving_initial is not None:
            motion = source[:, start:stop] + motion - driving_initial[:, start:stop]
        out = out.at[:, start:stop].set(motion)
    return out


def motion_field(
    model: mm.MorphableModel,
    source_coeffs: jax.Array,
    target_fragments: rasterizer.Fragments,
    image_size: int,
    *,
    source_visibility: bool = False,
) -> dict:
    """M_3D: for each target pixel on the face, where the same surface point lies in the source.

    Each covered target pixel's perspective-correct barycentrics (`target_fragments`) pick the
    surface point, whose source camera-space position is interpolated from the source mesh
    (same topology) and projected. Exact in 3D, not an interpolation of 2D projections. The
    target is not rasterized again: its fragments are the ones its render drew.

    Args:
      source_coeffs: [B, 257].
      target_fragments: `render(model, target_coeffs, image_size)['fragments']` (target =
        e.g. `reenact_coefficients(...)`).
      image_size: static S.
      source_visibility: also rasterize the source mesh for 'source_visible'.
    Returns:
      {'motion': [B, S, S, 2] (x, y) in the FOMM grid convention (align_corners=True), the
       identity grid off the face; 'coverage': [B, S, S] float32 {0, 1}, where the target face
       is; with `source_visibility`, 'source_visible': [B, S, S] float32 {0, 1}, covered
       pixels whose surface point is also the visible one in the source render (not
       self-occluded there)}.
    """
    source = mm.reconstruct(model, source_coeffs, image_size)
    points = rasterizer.interpolate(source["vertices"], target_fragments, model.triangles)
    covered = target_fragments.triangle_id >= 0
    safe = jnp.where(covered[..., None], points, jnp.array([0.0, 0.0, 1.0]))
    source_xy = screen_vertices(safe, image_size, model)[..., :2]
    grid = jnp.broadcast_to(coordinate_grid(image_size, image_size), source_xy.shape)
    motion = jnp.where(covered[..., None], pixels_to_grid(source_xy, image_size), grid)
    out = {"motion": motion, "coverage": covered.astype(jnp.float32)}
    if not source_visibility:
        return out

    # Self-occlusion in the source: the surface point must be the nearest one at its pixel.
    screen_s = screen_vertices(source["vertices"], image_size, model)
    source_depth = _rasterize_face(model, screen_s, image_size).depth
    col = jnp.clip(jnp.floor(source_xy[..., 0]).astype(jnp.int32), 0, image_size - 1)
    row = jnp.clip(jnp.floor(source_xy[..., 1]).astype(jnp.int32), 0, image_size - 1)
    batch = jnp.arange(col.shape[0])[:, None, None]
    nearest = source_depth[batch, row, col]
    visible = covered & (nearest > 0) & (safe[..., 2] <= nearest * 1.01 + 1e-3)
    return {**out, "source_visible": visible.astype(jnp.float32)}
