"""Rasterizer vs a brute-force numpy reference: visibility, depth, barycentrics, gradients."""

import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest

from maskrenderer_jax.face3d import rasterizer


def reference_fragments(vertices, triangles, height, width, cull_backfaces=False, znear=0.0):
    """Brute force in float64: every pixel centre against every triangle, nearest wins.

    Same conventions as the rasterizer: top-left rule on edges oriented low -> high vertex
    index, ties to the lowest triangle id. Returns ids [B,H,W], depth [B,H,W] (0 background)
    and perspective-correct barycentrics [B,H,W,3] (0 background).
    """
    vertices = np.asarray(vertices, np.float64)
    triangles = np.asarray(triangles)
    batch = vertices.shape[0]
    py, px = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
    ids = np.full((batch, height, width), -1)
    depth = np.full((batch, height, width), np.inf)
    bary = np.zeros((batch, height, width, 3))
    for b in range(batch):
        for t, tri in enumerate(triangles):
            c = vertices[b, tri]
            if not np.all(np.isfinite(c)) or np.any(c[:, 2] <= znear):
                continue
            (x0, y0), (x1, y1), (x2, y2) = c[0, :2], c[1, :2], c[2, :2]
            area = (x1 - x0) * (y2 - y0) - (y1 - y0) * (x2 - x0)
            if area == 0 or (cull_backfaces and area > 0):  # back face: clockwise on screen
                continue
            orient = 1.0 if area > 0 else -1.0
            inside = np.ones((height, width), bool)
            edges = []
            for k in range(3):
                i, j = k, (k + 1) % 3
                sign = orient
                if tri[i] > tri[j]:
                    i, j, sign = j, i, -orient
                ax, ay = c[i, :2]
                dx, dy = c[j, 0] - ax, c[j, 1] - ay
                e = sign * (dx * (py - ay) - dy * (px - ax))
                nx, ny = -sign * dy, sign * dx
                topleft = nx > 0 or (nx == 0 and ny > 0)
                inside &= (e > 0) | ((e == 0) & topleft)
                edges.append(e)
            screen = np.stack([edges[1], edges[2], edges[0]], -1)  # weights of v0, v1, v2
            screen = screen / screen.sum(-1, keepdims=True)
            persp = screen / c[:, 2]
            z = 1.0 / persp.sum(-1)
            nearer = inside & (z < depth[b])
            ids[b][nearer] = t
            depth[b][nearer] = z[nearer]
            bary[b][nearer] = (persp / persp.sum(-1, keepdims=True))[nearer]
    depth[ids < 0] = 0.0
    return ids, depth, bary


def reference_coverage_count(vertices, triangles, height, width):
    """[B, H, W] number of triangles covering each pixel centre (no z-test), same rules."""
    counts = np.zeros((vertices.shape[0], height, width), int)
    for t in range(len(triangles)):
        ids, _, _ = reference_fragments(vertices, triangles[t : t + 1], height, width)
        counts += ids >= 0
    return counts


def random_scene(rng, batch, height, width, num_tris):
    """Triangles of every size (sub-pixel to beyond the image), random depths and windings,
    overlapping, crossing the border, plus shared edges and degenerate ones."""
    sizes = rng.choice(
        [1.5, 4.0, 12.0, 40.0, 400.0], (batch, num_tris, 1, 1), p=[0.4, 0.3, 0.15, 0.1, 0.05]
    )
    centre = rng.uniform([-3, -3], [width + 3, height + 3], size=(batch, num_tris, 1, 2))
    xy = centre + sizes * rng.uniform(-1, 1, size=(batch, num_tris, 3, 2))
    z = rng.uniform(1.0, 10.0, size=(batch, num_tris, 3, 1))
    vertices = np.concatenate([xy, z], -1).reshape(batch, 3 * num_tris, 3)
    triangles = np.arange(3 * num_tris).reshape(num_tris, 3)
    # Degenerate: exactly collinear (integer coordinates) and a repeated vertex index.
    vertices[:, 0, :2], vertices[:, 1, :2], vertices[:, 2, :2] = (2, 2), (10, 6), (18, 10)
    shared = np.stack([triangles[3:8, 1], triangles[3:8, 0], triangles[8:13, 2]], -1)
    extra = np.array([[6, 6, 7], *shared])
    return vertices.astype(np.float32), np.concatenate([triangles, extra]).astype(np.int32)


def assert_matches_reference(vertices, triangles, height, width, **kwargs):
    fragments = rasterizer.rasterize(vertices, triangles, height, width, **kwargs)
    ids, depth, bary = reference_fragments(vertices, triangles, height, width, **kwargs)
    np.testing.assert_array_equal(np.asarray(fragments.triangle_id), ids)
    np.testing.assert_allclose(np.asarray(fragments.depth), depth, rtol=1e-5, atol=0)
    np.testing.assert_allclose(np.asarray(fragments.barycentrics), bary, atol=1e-5)
    return ids


@pytest.mark.parametrize("cull_backfaces", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_visibility_matches_brute_force(seed, cull_backfaces):
    rng = np.random.default_rng(seed)
    vertices, triangles = random_scene(rng, batch=2, height=32, width=48, num_tris=60)
    ids = assert_matches_reference(vertices, triangles, 32, 48, cull_backfaces=cull_backfaces)
    assert len(np.unique(ids[ids >= 0])) > 20  # a real scene: many triangles win somewhere
    boxes = [
        np.ptp(vertices[b][triangles[t]][:, :2], axis=0).max()
        for b in range(2)
        for t in np.unique(ids[b][ids[b] >= 0])
    ]
    assert min(boxes) < 3 and max(boxes) > 48  # visible ones from sub-pixel to beyond the image


def sphere_mesh(rows, cols, size, batch, seed=0):
    """A closed lat-long sphere (outward, counter-clockwise in model space), turned a little
    per batch element and seen in perspective: many tiny triangles, silhouette folds, half
    of them back faces. Returns ([B, V, 3] float32 image coordinates + depth, [T, 3])."""
    lat = np.linspace(-np.pi / 2, np.pi / 2, rows)[1:-1]
    lon = np.linspace(0, 2 * np.pi, cols, endpoint=False)
    ring = np.stack(np.meshgrid(lat, lon, indexing="ij"), -1).reshape(-1, 2)
    unit = np.stack(
        [
            np.cos(ring[:, 0]) * np.sin(ring[:, 1]),
            np.sin(ring[:, 0]),
            np.cos(ring[:, 0]) * np.cos(ring[:, 1]),
        ],
        -1,
    )
    unit = np.concatenate([unit, [[0, -1, 0], [0, 1, 0]]])
    index = np.arange((rows - 2) * cols).reshape(rows - 2, cols)
    a, b = index[:-1], index[1:]
    c, d = np.roll(b, -1, axis=1), np.roll(a, -1, axis=1)
    quads = np.concatenate([np.stack([a, c, b], -1), np.stack([a, d, c], -1)]).reshape(-1, 3)
    south, north = len(unit) - 2, len(unit) - 1
    caps = [[south, index[0, (j + 1) % cols], index[0, j]] for j in range(cols)]
    caps += [[north, index[-1, j], index[-1, (j + 1) % cols]] for j in range(cols)]
    triangles = np.concatenate([quads, caps]).astype(np.int32)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(batch):
        yaw, pitch = rng.uniform(-0.5, 0.5, 2)
        ry = np.array([[np.cos(yaw), 0, np.sin(yaw)], [0, 1, 0], [-np.sin(yaw), 0, np.cos(yaw)]])
        rx = np.array(
            [[1, 0, 0], [0, np.cos(pitch), -np.sin(pitch)], [0, np.sin(pitch), np.cos(pitch)]]
        )
        world = unit @ (rx @ ry).T * np.array([1.0, 1.3, 1.0])
        depth = 4.0 - world[:, 2]
        focal = 1.2 * size
        xy = np.stack([focal * world[:, 0] / depth, -focal * world[:, 1] / depth], -1)
        out.append(np.concatenate([xy + size / 2 + rng.uniform(-2, 2, 2), depth[:, None]], -1))
    return np.asarray(out, np.float32), triangles


@pytest.mark.parametrize("cull_backfaces", [False, True])
def test_dense_closed_mesh_matches_brute_force(cull_backfaces):
    vertices, triangles = sphere_mesh(rows=24, cols=40, size=40, batch=2)
    ids = assert_matches_reference(vertices, triangles, 40, 40, cull_backfaces=cull_backfaces)
    assert len(np.unique(ids)) > 300  # many tiny triangles
    assert 0.3 < np.mean(ids >= 0) < 0.9


@pytest.mark.slow
def test_face_sized_mesh_matches_brute_force():
    vertices, triangles = sphere_mesh(rows=50, cols=90, size=80, batch=2, seed=1)
    ids = assert_matches_reference(vertices, triangles, 80, 80)
    assert len(np.unique(ids)) > 2000


def test_triangle_sizes_cover_every_bucket():
    # One triangle per size class of the method (box of 1..4, 5..64, 65..1024, > 1024 pixels
    # of a 40x56 image), stacked in depth so that each one is visible somewhere.
    height, width = 40, 56
    spans = [1.2, 3.0, 7.0, 20.0, 45.0, 1e4]
    tris = []
    for i, span in enumerate(spans):
        x, y = 3.3 + 7.1 * i, 4.6 + 3.2 * i
        tris.append([[x, y, 1.0 + i], [x + span, y + 0.3, 1.5 + i], [x + 0.2, y + span, 2.0 + i]])
    vertices = np.asarray(tris, np.float32).reshape(1, -1, 3)
    triangles = np.arange(vertices.shape[1]).reshape(-1, 3)
    ids = assert_matches_reference(vertices, triangles, height, width)
    assert set(np.unique(ids)) == {-1, *range(len(spans))}


def test_watertight_mesh_covers_each_pixel_centre_once():
    # A fan and a grid whose vertices sit on pixel centres: many centres lie exactly on shared
    # edges and vertices, where the top-left rule must pick exactly one triangle.
    height, width = 24, 32
    grid = np.stack(np.meshgrid(np.arange(5) * 4 + 2.5, np.arange(4) * 4 + 4.5), -1).reshape(-1, 2)
    index = np.arange(20).reshape(4, 5)
    a, b, c, d = index[:-1, :-1], index[:-1, 1:], index[1:, 1:], index[1:, :-1]
    quads = np.concatenate([np.stack([a, b, c], -1), np.stack([a, c, d], -1)]).reshape(-1, 3)
    rim = [(5, 0), (4, 4), (0, 5), (-4, 4), (-5, 0), (-4, -4), (0, -5), (4, -4)]
    fan = np.array([(24.5, 12.5)] + [(24.5 + dx, 12.5 + dy) for dx, dy in rim])
    fan_tris = np.array([[20, 21 + i, 21 + (i + 1) % 8] for i in range(8)])
    xy = np.concatenate([grid, fan])
    z = 2.0 + 0.1 * np.arange(len(xy))[:, None]
    vertices = np.concatenate([xy, z], -1)[None].astype(np.float32)
    triangles = np.concatenate([quads, fan_tris]).astype(np.int32)
    assert_matches_reference(vertices, triangles, height, width)
    counts = reference_coverage_count(vertices, triangles, height, width)
    ours = sum(
        np.asarray(
            rasterizer.rasterize(vertices, triangles[t : t + 1], height, width).triangle_id >= 0
        ).astype(int)
        for t in range(len(triangles))
    )
    np.testing.assert_array_equal(ours, counts)
    assert counts.max() == 1
    inside_grid = np.zeros((height, width), bool)
    inside_grid[5:16, 3:18] = True  # centres strictly inside the grid's outline
    assert np.all(counts[0][inside_grid] == 1)


def test_top_left_rule_and_winding():
    # Right triangle with its corners on pixel centres: the top edge (y = 0.5) and the left
    # edge (x = 0.5) are drawn, the hypotenuse (a right edge) is not.
    corners = np.array([[[0.5, 0.5, 1.0], [4.5, 0.5, 1.0], [0.5, 4.5, 1.0]]], np.float32)
    front = np.array([[0, 2, 1]], np.int32)  # counter-clockwise as seen on the screen
    fragments = rasterizer.rasterize(corners, front, 6, 6, cull_backfaces=True)
    i, j = np.mgrid[:6, :6]
    np.testing.assert_array_equal(np.asarray(fragments.triangle_id[0]) == 0, i + j < 4)
    # The same triangle clockwise is a back face: drawn, unless culled.
    back = front[:, ::-1]
    assert np.all(rasterizer.rasterize(corners, back, 6, 6).triangle_id[0][i + j < 4] == 0)
    culled = rasterizer.rasterize(corners, back, 6, 6, cull_backfaces=True)
    assert np.all(np.asarray(culled.triangle_id) == -1)


def test_skipped_triangles_draw_nothing():
    full = [[-100.0, -100.0, 5.0], [300.0, -100.0, 5.0], [-100.0, 300.0, 5.0]]
    near = [[2.0, 2.0, 1.0], [20.0, 3.0, 1.0], [3.0, 20.0, 1.0]]
    cases = {
        "nan": [[2.0, 2.0, np.nan], [20.0, 3.0, 1.0], [3.0, 20.0, 1.0]],
        "inf": [[np.inf, 2.0, 1.0], [20.0, 3.0, 1.0], [3.0, 20.0, 1.0]],
        "behind": [[2.0, 2.0, -1.0], [20.0, 3.0, 1.0], [3.0, 20.0, 1.0]],
        "at_camera": [[2.0, 2.0, 0.0], [20.0, 3.0, 1.0], [3.0, 20.0, 1.0]],
        "zero_area": [[2.0, 2.0, 1.0], [10.0, 6.0, 1.0], [18.0, 10.0, 1.0]],
    }
    for name, corners in cases.items():
        vertices = np.asarray([full + corners], np.float32)
        fragments = rasterizer.rasterize(vertices, np.array([[0, 1, 2], [3, 4, 5]]), 16, 24)
        assert np.all(np.asarray(fragments.triangle_id) == 0), name
        np.testing.assert_allclose(np.asarray(fragments.depth), 5.0, rtol=1e-6)
    vertices = np.asarray([full + near], np.float32)
    fragments = rasterizer.rasterize(vertices, np.array([[0, 1, 2], [3, 4, 5]]), 16, 24, znear=1.5)
    assert np.all(np.asarray(fragments.triangle_id) == 0)  # z = 1 <= znear


def test_perspective_correct_depth_and_interpolation():
    # A quad receding in depth: 1/z is affine in screen space, z itself is not.
    vertices = np.array([[[0, 0, 1], [16, 0, 4], [16, 8, 4], [0, 8, 1]]], np.float32)
    triangles = np.array([[0, 1, 2], [0, 2, 3]], np.int32)
    fragments = rasterizer.rasterize(vertices, triangles, 8, 16)
    x = np.arange(16) + 0.5
    expected = 1.0 / (1.0 + (0.25 - 1.0) * x / 16)
    np.testing.assert_allclose(np.asarray(fragments.depth[0]), np.tile(expected, (8, 1)), rtol=1e-5)
    # Interpolating z itself gives back the depth.
    z = rasterizer.interpolate(vertices[..., 2:], fragments, triangles)
    np.testing.assert_allclose(np.asarray(z[0, ..., 0]), np.asarray(fragments.depth[0]), rtol=1e-5)


def test_interpolate_matches_reference_and_is_zero_on_background():
    rng = np.random.default_rng(3)
    vertices, triangles = random_scene(rng, batch=2, height=32, width=48, num_tris=40)
    attributes = rng.normal(size=(2, vertices.shape[1], 3)).astype(np.float32)
    fragments = rasterizer.rasterize(vertices, triangles, 32, 48)
    ids, _, bary = reference_fragments(vertices, triangles, 32, 48)
    corner_attributes = attributes[np.arange(2)[:, None, None, None], triangles[np.maximum(ids, 0)]]
    expected = np.einsum("bhwk,bhwkc->bhwc", bary, corner_attributes)
    out = rasterizer.interpolate(attributes, fragments, triangles)
    np.testing.assert_allclose(np.asarray(out), expected, atol=2e-5)
    assert np.all(np.asarray(out)[ids < 0] == 0)


def test_interpolate_gradients_match_finite_differences():
    rng = np.random.default_rng(4)
    vertices, triangles = random_scene(rng, batch=2, height=12, width=16, num_tris=16)
    fragments = rasterizer.rasterize(vertices, triangles, 12, 16)
    assert np.mean(np.asarray(fragments.triangle_id) >= 0) > 0.3
    with jax.enable_x64(True):
        vertices64 = jnp.asarray(vertices, jnp.float64)
        attributes = jnp.asarray(rng.normal(size=(2, vertices.shape[1], 2)), jnp.float64)
        weights = jnp.asarray(rng.normal(size=(2, 12, 16, 2)), jnp.float64)

        def loss(attributes, vertices):  # the visibility has no gradient, the barycentrics do
            fragments = rasterizer.rasterize(vertices, triangles, 12, 16)
            image = rasterizer.interpolate(attributes, fragments, triangles)
            return jnp.sum(weights * image**2)

        jax.test_util.check_grads(
            loss, (attributes, vertices64), order=1, modes=["rev"], eps=1e-6, atol=1e-6, rtol=1e-6
        )
        grad_vertices = jax.grad(loss, argnums=1)(attributes, vertices64)
        assert np.all(np.isfinite(np.asarray(grad_vertices)))
        assert np.count_nonzero(np.asarray(grad_vertices)[..., 2]) > 0  # perspective: z too


def test_jit_and_batch():
    rng = np.random.default_rng(5)
    vertices, triangles = random_scene(rng, batch=3, height=16, width=24, num_tris=20)
    attributes = rng.normal(size=(3, vertices.shape[1], 3)).astype(np.float32)

    @jax.jit
    def render(vertices, attributes):
        fragments = rasterizer.rasterize(vertices, triangles, 16, 24)
        color = rasterizer.interpolate(attributes, fragments, triangles)
        return fragments, color, rasterizer.silhouette(fragments, vertices, triangles)

    fragments, color, coverage = render(vertices, attributes)
    assert color.shape == (3, 16, 24, 3) and coverage.shape == (3, 16, 24)
    for b in range(3):  # inside an outer jit = on its own; batch elements are independent
        single = rasterizer.rasterize(vertices[b : b + 1], triangles, 16, 24)
        np.testing.assert_array_equal(single.triangle_id[0], fragments.triangle_id[b])
        np.testing.assert_array_equal(single.depth[0], fragments.depth[b])
    ids, _, _ = reference_fragments(vertices, triangles, 16, 24)
    np.testing.assert_array_equal(fragments.triangle_id, ids)


def test_triangle_neighbors():
    triangles = np.array([[0, 1, 2], [0, 2, 3], [2, 1, 4]], np.int32)
    # Triangle 0: edge (0,1) is a border, (1,2) is shared with 2, (2,0) with 1.
    expected = [[-1, 2, 1], [0, -1, -1], [0, -1, -1]]
    np.testing.assert_array_equal(np.asarray(rasterizer.triangle_neighbors(triangles)), expected)


def test_silhouette_gradients_recover_a_translation():
    height, width = 32, 48
    quad = jnp.array([[[12.3, 8.7, 2.0], [30.4, 9.2, 2.0], [31.1, 24.6, 2.0], [11.8, 23.9, 2.0]]])
    triangles = jnp.array([[0, 1, 2], [0, 2, 3]], jnp.int32)
    neighbors = rasterizer.triangle_neighbors(triangles)
    shift = jnp.array([3.0, -2.0])

    def coverage(vertices, fragments):
        return rasterizer.silhouette(fragments, vertices, triangles, neighbors)

    def fragments_of(vertices):
        return rasterizer.rasterize(vertices, triangles, height, width)

    shifted = quad.at[..., :2].add(shift)
    target = coverage(shifted, fragments_of(shifted))

    def loss(offset, fragments):  # visibility is recomputed outside, without gradient
        return jnp.sum((coverage(quad.at[..., :2].add(offset), fragments) - target) ** 2)

    step = jax.jit(jax.value_and_grad(loss))
    offset = jnp.zeros(2)
    first, grad = step(offset, fragments_of(quad))
    assert np.all(np.abs(np.asarray(grad)) > 1)  # the hard mask alone would give zero
    for i in range(80):
        value, grad = step(offset, fragments_of(quad.at[..., :2].add(offset)))
        offset = offset - 0.005 * 0.97**i * grad
    assert float(value) < 0.01 * float(first)
    np.testing.assert_allclose(np.asarray(offset), np.asarray(shift), atol=0.15)
