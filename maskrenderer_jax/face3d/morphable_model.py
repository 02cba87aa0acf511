"""The Basel Face Model as Deep3DFace uses it (sicxu/Deep3DFaceRecon_pytorch, models/bfm.py).

`MorphableModel` holds the model arrays (a pytree: pass it into `jax.jit` as an argument, do not
close over it, or the bases become compile-time constants); `load_bfm_mat` reads the shipped
`BFM_model_front.mat`, `save_npz`/`load_npz` the converted form. The rest are pure, batched,
jit-able functions from 257 coefficients to a posed, lit mesh and 68 landmarks, each matching
the like-named step of Deep3DFace's `ParametricFaceModel` (quirks included, see `reconstruct`).

Frames: model space is BFM's (x right, y up, z towards the viewer, decimetres); camera space
is Deep3DFace's (x, y unchanged, z' = camera_distance - z, so z' is the depth in front of the
camera); `project` gives (u, v) with v pointing UP (Deep3DFace's `to_image`), and
`image_coordinates` turns that into the usual top-left-origin image convention.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from maskrenderer_jax.face3d.rasterizer import triangle_neighbors

COEFF_GROUPS = (  # name, start, stop in the 257-vector of Deep3DFace's regressor
    ("id", 0, 80),
    ("exp", 80, 144),
    ("tex", 144, 224),
    ("angle", 224, 227),
    ("gamma", 227, 254),
    ("trans", 254, 257),
)
COEFF_SLICES = {name: slice(start, stop) for name, start, stop in COEFF_GROUPS}
NUM_COEFFS = 257
NUM_LANDMARKS = 68
FOCAL, CENTER, CAMERA_DISTANCE, IMAGE_SIZE = 1015.0, 112.0, 10.0, 224
INIT_LIT = (0.8, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
# Deep3DFace's SH constants: a_l (Lambertian kernel) and c_l (SH normalisation), l = 0, 1, 2.
SH_A = (np.pi, 2 * np.pi / np.sqrt(3.0), 2 * np.pi / np.sqrt(8.0))
SH_C = (
    1 / np.sqrt(4 * np.pi),
    np.sqrt(3.0) / np.sqrt(4 * np.pi),
    3 * np.sqrt(5.0) / np.sqrt(12 * np.pi),
)
_HIGHEST = jax.lax.Precision.HIGHEST  # 3DMM geometry stays float32 on every backend
_static = dict(pytree_node=False)


@struct.dataclass
class MorphableModel:
    """A 3DMM in Deep3DFace's layout; N vertices, F triangles, indices 0-based.

    Attributes:
      mean_shape: [N, 3] float32, recentred (mean over vertices subtracted), decimetres.
      id_base: [3N, 80] float32; row 3i + k is coordinate k of vertex i (the .mat layout).
      exp_base: [3N, 64] float32, same layout.
      mean_tex: [3N] float32 in 0-255 (RGB interleaved per vertex).
      tex_base: [3N, 80] float32 (0-255 units).
      triangles: [F, 3] int32.
      point_buf: [N, K] int32 (K = 8 in BFM): the triangles around each vertex; the value F
        pads, pointing at an appended zero normal.
      keypoints: [68] int32 vertex indices, iBUG-68 order.
      skin_mask: [N] float32 in {0, 1}: Deep3DFace's skin region (reflectance loss).
      front_mask: [M] int32 vertex indices of the photometric-loss region (frontmask2_idx).
      front_triangles: [T, 3] int32 triangles of that region, indexing all N vertices.
      triangle_neighbors: [F, 3] int32, the triangle across each edge (-1 on the border):
        derived from `triangles` once, here, since anti-aliased rendering needs it every call.
      focal, center, camera_distance, image_size, init_lit: static camera and lighting
        constants (Deep3DFace: 1015, 112, 10, 224, [0.8, 0 x 8]).
    """

    mean_shape: jax.Array
    id_base: jax.Array
    exp_base: jax.Array
    mean_tex: jax.Array
    tex_base: jax.Array
    triangles: jax.Array
    point_buf: jax.Array
    keypoints: jax.Array
    skin_mask: jax.Array
    front_mask: jax.Array
    front_triangles: jax.Array
    triangle_neighbors: jax.Array
    focal: float = struct.field(default=FOCAL, **_static)
    center: float = struct.field(default=CENTER, **_static)
    camera_distance: float = struct.field(default=CAMERA_DISTANCE, **_static)
    image_size: int = struct.field(default=IMAGE_SIZE, **_static)
    init_lit: tuple = struct.field(default=INIT_LIT, **_static)

    @property
    def num_vertices(self) -> int:
        return self.mean_shape.shape[0]

    @property
    def num_triangles(self) -> int:
        return self.triangles.shape[0]


ARRAY_FIELDS = (
    "mean_shape",
    "id_base",
    "exp_base",
    "mean_tex",
    "tex_base",
    "triangles",
    "point_buf",
    "keypoints",
    "skin_mask",
    "front_mask",
    "front_triangles",
)
STATIC_FIELDS = ("focal", "center", "camera_distance", "image_size", "init_lit")
_INDEX_FIELDS = ("triangles", "point_buf", "keypoints", "front_mask", "front_triangles")


def model_from_arrays(arrays: dict, **static) -> MorphableModel:
    """{field: array} (0-based indices, our layout) -> MorphableModel of float32/int32 jnp."""
    fields = {
        k: jnp.asarray(arrays[k], jnp.int32 if k in _INDEX_FIELDS else jnp.float32)
        for k in ARRAY_FIELDS
    }
    return MorphableModel(
        **fields, triangle_neighbors=triangle_neighbors(fields["triangles"]), **static
    )


def recentre(mean_shape: np.ndarray) -> np.ndarray:
    """[*] flat or [N, 3] -> [N, 3] float32 minus its mean over vertices (Deep3DFace's
    `recenter`, done in float32 numpy as there)."""
    shape = np.asarray(mean_shape, np.float32).reshape(-1, 3)
    return shape - np.mean(shape, axis=0, keepdims=True)


# ---------------------------------------------------------------------------------------------
# The math. B = batch, N = vertices; everything float32.


def check_coefficients(coeffs) -> None:
    """Raises ValueError unless coeffs is [B, 257] and finite, naming the offending groups.

    Only concrete values can be checked: under `jax.jit` (a tracer) this does nothing, and
    non-finite coefficients propagate to non-finite outputs (call it before the jitted code).
    """
    if isinstance(coeffs, jax.core.Tracer):
        return
    coeffs = np.asarray(coeffs)
    if coeffs.ndim != 2 or coeffs.shape[-1] != NUM_COEFFS:
        raise ValueError(f"coefficients must be [B, {NUM_COEFFS}]; got {list(coeffs.shape)}")
    bad = []
    for name, start, stop in COEFF_GROUPS:
        rows = np.nonzero(~np.all(np.isfinite(coeffs[:, start:stop]), axis=1))[0]
        if rows.size:
            bad.append(f"{name} [{start}:{stop}] in batch rows {rows.tolist()}")
    if bad:
        raise ValueError("non-finite (NaN/inf) 3DMM coefficients: " + "; ".join(bad))


# Under x -> -x (a horizontal image flip about the principal point), R = Rz Ry Rx becomes
# M R M = Rz(-z) Ry(-y) Rx(x), tx -> -tx, and the SH lighting terms odd in x (basis 3: -x,
# 4: xy, 7: -xz of Deep3DFace's [1, -y, z, -x, xy, -yz, ..., -xz, ...]) change sign.
def _mirror_sign() -> np.ndarray:
    start = {name: begin for name, begin, _ in COEFF_GROUPS}
    sign = np.ones(NUM_COEFFS, np.float32)
    sign[[start["angle"] + 1, start["angle"] + 2, start["trans"]]] = -1
    for channel in range(3):
        sign[[start["gamma"] + 9 * channel + k for k in (3, 4, 7)]] = -1
    return sign


MIRROR_SIGN = _mirror_sign()


def mirror_coefficients(coeffs: jax.Array) -> jax.Array:
    """[..., 257] coefficients of a face -> those of its horizontally flipped image.

    Exact for pose, translation and lighting; an involution (mirroring twice is the identity).
    id, exp and tex are left as they are: a 3DMM's bases are not mirror pairs, so their mirror
    image is only approximated by themselves (exact for symmetric faces); training batches
    carry `flipped`, and face3d.branch renders from the unmirrored coefficients.
    """
    return coeffs * MIRROR_SIGN


def split_coeffs(coeffs: jax.Array) -> dict[str, jax.Array]:
    """[B, 257] -> {'id' [B,80], 'exp' [B,64], 'tex' [B,80], 'angle' [B,3] (x, y, z radians),
    'gamma' [B,27], 'trans' [B,3]}."""
    if coeffs.shape[-1] != NUM_COEFFS:
        raise ValueError(f"coefficients must be [..., {NUM_COEFFS}]; got {coeffs.shape}")
    return {name: coeffs[..., start:stop] for name, start, stop in COEFF_GROUPS}


def face_shape(model: MorphableModel, id_coeffs: jax.Array, exp_coeffs: jax.Array) -> jax.Array:
    """[B, 80], [B, 64] -> [B, N, 3] vertices in model space (before pose)."""
    id_part = jnp.einsum("ij,bj->bi", model.id_base, id_coeffs, precision=_HIGHEST)
    exp_part = jnp.einsum("ij,bj->bi", model.exp_base, exp_coeffs, precision=_HIGHEST)
    flat = id_part + exp_part + model.mean_shape.reshape(1, -1)
    return flat.reshape(flat.shape[0], -1, 3)


def face_texture(model: MorphableModel, tex_coeffs: jax.Array, normalize: bool = True) -> jax.Array:
    """[B, 80] -> [B, N, 3] RGB albedo, in 0-1 (divided by 255, not clipped, as Deep3DFace),
    or 0-255 with normalize=False."""
    flat = jnp.einsum("ij,bj->bi", model.tex_base, tex_coeffs, precision=_HIGHEST)
    flat = flat + model.mean_tex[None]
    if normalize:
        flat = flat / 255.0
    return flat.reshape(flat.shape[0], -1, 3)


def rotation_matrix(angles: jax.Array) -> jax.Array:
    """[B, 3] Euler angles (x, y, z) in radians -> [B, 3, 3] R = Rz @ Ry @ Rx, acting on column
    vectors. Deep3DFace's `compute_rotation` returns R^T (it right-multiplies row vectors)."""
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    one, zero = jnp.ones_like(angles[:, 0]), jnp.zeros_like(angles[:, 0])

    def matrix(*rows):
        return jnp.stack([jnp.stack(row, axis=-1) for row in rows], axis=-2)

    (cx, cy, cz), (sx, sy, sz) = cos.T, sin.T
    rx = matrix((one, zero, zero), (zero, cx, -sx), (zero, sx, cx))
    ry = matrix((cy, zero, sy), (zero, one, zero), (-sy, zero, cy))
    rz = matrix((cz, -sz, zero), (sz, cz, zero), (zero, zero, one))
    return jnp.matmul(jnp.matmul(rz, ry, precision=_HIGHEST), rx, precision=_HIGHEST)


def rotate(points: jax.Array, rotation: jax.Array) -> jax.Array:
    """[B, N, 3] row vectors, [B, 3, 3] R -> [B, N, 3] points @ R^T (R applied to each)."""
    return jnp.einsum("bnj,bij->bni", points, rotation, precision=_HIGHEST)


def transform(vertices: jax.Array, rotation: jax.Array, translation: jax.Array) -> jax.Array:
    """[B, N, 3], R [B, 3, 3], t [B, 3] -> [B, N, 3] = vertices @ R^T + t (model -> world)."""
    return rotate(vertices, rotation) + translation[:, None, :]


def to_camera(vertices: jax.Array, camera_distance: float = CAMERA_DISTANCE) -> jax.Array:
    """[B, N, 3] world -> camera space: z' = camera_distance - z (the camera sits at
    z = camera_distance looking down -z); x, y unchanged. Pure (Deep3DFace writes in place)."""
    return jnp.concatenate([vertices[..., :2], camera_distance - vertices[..., 2:]], axis=-1)


def camera_for_size(
    image_size: int, focal: float = FOCAL, center: float = CENTER, base_size: int = IMAGE_SIZE
) -> tuple[float, float]:
    """(focal, center) in pixels for an image_size x image_size render of the same view.

    Deep3DFace's constants are for 224 px; both scale by image_size / 224, which keeps the field
    of view (2 atan(112 / 1015) ~ 12.6 deg) and puts the principal point at the image centre
    (continuous coordinates, pixel i spanning [i, i + 1]). 256 -> (1160, 128).
    """
    scale = image_size / base_size
    return focal * scale, center * scale


def project(vertices: jax.Array, focal: float = FOCAL, center: float = CENTER) -> jax.Array:
    """[B, N, 3] camera space -> [B, N, 2] (u, v) pixels = focal * (x, y) / z' + center, with v
    pointing UP (Deep3DFace's `to_image`; `image_coordinates` flips it)."""
    x, y, z = vertices[..., 0:1], vertices[..., 1:2], vertices[..., 2:3]
    # Deep3DFace multiplies by the intrinsics then divides: (f x + c z) / z.
    return jnp.concatenate([focal * x + center * z, focal * y + center * z], axis=-1) / z


def image_coordinates(points: jax.Array, image_size: int = IMAGE_SIZE) -> jax.Array:
    """[..., 2] (u, v-up) from `project`/`landmarks` -> (x, y-down) = (u, image_size - 1 - v),
    the flip Deep3DFace applies to saved and ground-truth landmarks (`H - 1 - y`)."""
    return jnp.stack([points[..., 0], image_size - 1 - points[..., 1]], axis=-1)


def _normalize(v: jax.Array) -> jax.Array:
    # torch F.normalize: v / max(|v|, 1e-12); written with the max inside the sqrt (same
    # values) so the gradient stays finite at degenerate triangles and padding normals.
    return v / jnp.sqrt(jnp.maximum(jnp.sum(v * v, axis=-1, keepdims=True), 1e-24))


def vertex_normals(model: MorphableModel, vertices: jax.Array) -> jax.Array:
    """[B, N, 3] -> [B, N, 3] unit vertex normals: the normalised sum of the unit normals of
    the triangles around each vertex (point_buf), face normal = (v0 - v1) x (v1 - v2)."""
    tri = vertices[:, model.triangles]  # [B, F, 3 corners, 3]
    face = _normalize(jnp.cross(tri[:, :, 0] - tri[:, :, 1], tri[:, :, 1] - tri[:, :, 2]))
    face = jnp.concatenate([face, jnp.zeros_like(face[:, :1])], axis=1)  # index F -> zero
    return _normalize(jnp.sum(face[:, model.point_buf], axis=2))


def sh_basis(normals: jax.Array) -> jax.Array:
    """[B, N, 3] unit normals -> [B, N, 9] Deep3DFace's SH basis, premultiplied by a_l c_l."""
    x, y, z = normals[..., 0], normals[..., 1], normals[..., 2]
    (a0, a1, a2), (c0, c1, c2) = SH_A, SH_C
    return jnp.stack(
        [
            a0 * c0 * jnp.ones_like(x),
            -a1 * c1 * y,
            a1 * c1 * z,
            -a1 * c1 * x,
            a2 * c2 * x * y,
            -a2 * c2 * y * z,
            0.5 * a2 * c2 / np.sqrt(3.0) * (3 * z**2 - 1),
            -a2 * c2 * x * z,
            0.5 * a2 * c2 * (x**2 - y**2),
        ],
        axis=-1,
    )


def irradiance(normals: jax.Array, gamma: jax.Array, init_lit=INIT_LIT) -> jax.Array:
    """[B, N, 3] normals, [B, 27] SH coefficients (3 colours x 9 bands, colour-major) ->
    [B, N, 3] per-vertex RGB irradiance; init_lit (ambient 0.8) is added to every colour."""
    gamma = gamma.reshape(gamma.shape[0], 3, 9) + jnp.asarray(init_lit, jnp.float32)
    return jnp.einsum("bnk,bck->bnc", sh_basis(normals), gamma, precision=_HIGHEST)


def face_color(texture: jax.Array, normals: jax.Array, gamma: jax.Array, init_lit=INIT_LIT):
    """[B, N, 3] albedo in 0-1, [B, N, 3] rotated unit normals, [B, 27] -> [B, N, 3] lit RGB
    (nominally 0-1; not clipped, as Deep3DFace)."""
    return irradiance(normals, gamma, init_lit) * texture


def landmarks(model: MorphableModel, projected: jax.Array) -> jax.Array:
    """[B, N, 2] projected vertices -> [B, 68, 2] at the model's keypoints (same convention)."""
    return projected[:, model.keypoints]


def reconstruct(model: MorphableModel, coeffs: jax.Array, image_size: int = IMAGE_SIZE) -> dict:
    """Deep3DFace's `compute_for_render`: 257 coefficients -> posed, lit mesh and landmarks.

    Called eagerly, non-finite coefficients raise ValueError (`check_coefficients`); under
    jit they cannot be checked. jit with `static_argnames='image_size'`.

    Args:
      coeffs: [B, 257] float32 (id | exp | tex | angle | gamma | trans).
      image_size: the render size; focal and centre scale from 224 (`camera_for_size`).
    Returns:
      'vertices': [B, N, 3] camera space (rotated, translated, z' = 10 - z).
      'colors': [B, N, 3] lit albedo, nominally 0-1.
      'landmarks': [B, 68, 2] pixels, exactly as compute_for_render: (u, v) with v UP
        (image row = image_size - 1 - v in Deep3DFace's saved landmarks; `image_coordinates`).
      'projected': [B, N, 2] all vertices, same convention.
      'texture': [B, N, 3] albedo 0-1; 'shape': [B, N, 3] model space before pose;
      'normals': [B, N, 3] unit normals rotated by the pose (the ones lit), in world space, so
        their z is towards the camera (camera-space normals would flip z);
      'rotation': [B, 3, 3] R (column-vector convention).
    """
    check_coefficients(coeffs)
    coeffs = jnp.asarray(coeffs, jnp.float32)
    c = split_coeffs(coeffs)
    focal, center = camera_for_size(image_size, model.focal, model.center, model.image_size)
    shape = face_shape(model, c["id"], c["exp"])
    rotation = rotation_matrix(c["angle"])
    vertices = to_camera(transform(shape, rotation, c["trans"]), model.camera_distance)
    projected = project(vertices, focal, center)
    texture = face_texture(model, c["tex"])
    # Deep3DFace lights normals of the unposed shape rotated by R (not the camera-space ones).
    normals = rotate(vertex_normals(model, shape), rotation)
    return {
        "vertices": vertices,
        "colors": face_color(texture, normals, c["gamma"], model.init_lit),
        "landmarks": landmarks(model, projected),
        "projected": projected,
        "texture": texture,
        "shape": shape,
        "normals": normals,
        "rotation": rotation,
    }
