"""Rendering the 3DMM and the 3D motion field M_3D, on the synthetic model."""

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskrenderer_jax.face3d import morphable_model as mm
from maskrenderer_jax.face3d import rasterizer, render, synthetic_bfm
from maskrenderer_jax.face3d.branch import branch_inputs
from maskrenderer_jax.models.layers import coordinate_grid, warp
from tests.jaxpr_utils import jit_calls

SIZE = 64


@pytest.fixture(scope="module")
def model():
    return synthetic_bfm.synthetic_bfm(seed=0)


def coefficients(batch, seed, pose_scale=0.15):
    rng = np.random.default_rng(seed)
    c = np.zeros((batch, mm.NUM_COEFFS), np.float32)
    c[:, 0:80] = rng.normal(0, 0.5, (batch, 80))
    c[:, 80:144] = rng.normal(0, 0.5, (batch, 64))
    c[:, 144:224] = rng.normal(0, 0.5, (batch, 80))
    c[:, 224:227] = rng.normal(0, pose_scale, (batch, 3))
    c[:, 227:254] = rng.normal(0, 0.1, (batch, 27))
    c[:, 254:257] = rng.normal(0, 0.05, (batch, 3))
    return c


render_jit = jax.jit(render.render, static_argnames=("image_size", "antialias"))
motion_jit = jax.jit(render.motion_field, static_argnames=("image_size", "source_visibility"))


def motion_of(model, source, target, **kwargs):
    """M_3D of coefficient sets, the target rasterized by its render."""
    fragments = render_jit(model, target, image_size=SIZE)["fragments"]
    return motion_jit(model, source, fragments, image_size=SIZE, **kwargs)


def test_render_draws_a_face(model):
    out = render_jit(model, coefficients(2, 0), image_size=SIZE)
    assert out["image"].shape == (2, SIZE, SIZE, 3) and out["mask"].shape == (2, SIZE, SIZE)
    mask = np.asarray(out["mask"])
    assert 0.2 < mask.mean() < 0.8  # a face, not an empty or full frame
    assert np.all((mask >= 0) & (mask <= 1 + 1e-6))
    face = np.asarray(out["image"])[mask > 0.99]
    assert face.mean() > 0.2  # lit skin, not black
    np.testing.assert_array_equal(np.asarray(out["image"])[mask == 0], 0.0)
    lm = np.asarray(out["landmarks"])
    assert np.all((lm > 0) & (lm < SIZE))
    depth = np.asarray(out["depth"])[mask > 0.99]
    assert np.all((depth > 8) & (depth < 12))  # camera at 10, face near the origin


def test_landmarks_match_reconstruct_after_the_half_pixel_flip(model):
    c = coefficients(1, 1)
    out = render_jit(model, c, image_size=224)
    recon = mm.reconstruct(model, c, 224)
    # Rendered pixels put vertex (u, v-up) at (u, 224 - v); Deep3DFace's saved landmarks
    # use the row 223 - v: they differ by exactly one pixel row in this convention.
    np.testing.assert_allclose(out["landmarks"][..., 0], recon["landmarks"][..., 0], atol=1e-3)
    np.testing.assert_allclose(
        out["landmarks"][..., 1], mm.image_coordinates(recon["landmarks"])[..., 1] + 1, atol=1e-3
    )


def test_reenact_coefficients_absolute_and_relative():
    s, d, d0 = (coefficients(2, k) for k in (1, 2, 3))
    groups = {name: slice(a, b) for name, a, b in mm.COEFF_GROUPS}
    absolute = np.asarray(render.reenact_coefficients(s, d))
    relative = np.asarray(render.reenact_coefficients(s, d, d0))
    for name in ("id", "tex", "gamma"):
        np.testing.assert_array_equal(absolute[:, groups[name]], s[:, groups[name]])
        np.testing.assert_array_equal(relative[:, groups[name]], s[:, groups[name]])
    for name in ("exp", "angle", "trans"):
        g = groups[name]
        np.testing.assert_array_equal(absolute[:, g], d[:, g])
        np.testing.assert_allclose(relative[:, g], s[:, g] + d[:, g] - d0[:, g], atol=1e-6)
    # Relative motion from the initial frame itself is the source's own pose.
    np.testing.assert_allclose(render.reenact_coefficients(s, d0, d0), s, atol=1e-6)


def test_motion_field_of_the_same_pose_is_the_identity(model):
    c = coefficients(2, 4)
    out = motion_of(model, c, c, source_visibility=True)
    covered = np.asarray(out["coverage"]) > 0
    assert covered.mean() > 0.2
    identity = np.broadcast_to(coordinate_grid(SIZE, SIZE), out["motion"].shape)
    np.testing.assert_allclose(np.asarray(out["motion"]), identity, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(out["source_visible"]) > 0, covered)


def test_warping_the_source_render_by_m3d_gives_the_target_render(model):
    source = coefficients(2, 5)
    source[:, 227:254] = 0.0  # ambient light only: the colour of a surface point is pose-free
    target = render.reenact_coefficients(source, coefficients(2, 6, pose_scale=0.2))
    src_img = render_jit(model, source, image_size=SIZE, antialias=False)["image"]
    tgt = render_jit(model, target, image_size=SIZE, antialias=False)
    flow = motion_jit(model, source, tgt["fragments"], image_size=SIZE, source_visibility=True)
    warped = warp(src_img, flow["motion"])
    # Inside the target face, away from the silhouette and where the source sees the point.
    valid = np.asarray(flow["source_visible"]) > 0
    inner = (
        np.asarray(
            jax.lax.reduce_window(tgt["mask"], 1.0, jax.lax.min, (1, 5, 5), (1, 1, 1), "SAME")
        )
        > 0.99
    )
    region = valid & inner
    assert region.mean() > 0.15
    err = np.abs(np.asarray(warped) - np.asarray(tgt["image"]))[region]
    # What remains is bilinear resampling of the texture; a wrong correspondence (flipped
    # axis, half-pixel shift, 2D interpolation of projections) is far larger.
    assert np.mean(err) < 0.01, np.mean(err)
    for wrong in (flow["motion"][..., ::-1], flow["motion"] + 1.0 / SIZE):  # swapped, shifted
        wrong_err = np.abs(np.asarray(warp(src_img, wrong)) - np.asarray(tgt["image"]))[region]
        assert np.mean(wrong_err) > 2 * np.mean(err), (np.mean(wrong_err), np.mean(err))


def test_motion_field_is_the_identity_off_the_face(model):
    source, target = coefficients(1, 7), coefficients(1, 8)
    out = motion_of(model, source, target)
    assert "source_visible" not in out  # not asked for: the source is not rasterized
    off = np.asarray(out["coverage"]) == 0
    identity = np.broadcast_to(coordinate_grid(SIZE, SIZE), out["motion"].shape)
    np.testing.assert_allclose(np.asarray(out["motion"])[off], identity[off], atol=1e-6)


def test_the_branch_equals_a_separate_rasterization_for_the_motion_field(model):
    """The branch renders the reenacted face and reads M_3D from the same fragments, in one
    program: the same visibility as rasterizing the target again on its own, the same fields
    to float rounding (the programs are compiled apart)."""
    source, driving = coefficients(2, 10), coefficients(2, 11, pose_scale=0.2)
    shared = jax.jit(branch_inputs, static_argnums=3)(model, source, driving, SIZE)
    target = render.reenact_coefficients(source, driving)
    screen = render.screen_vertices(mm.reconstruct(model, target, SIZE)["vertices"], SIZE, model)
    fragments = rasterizer.rasterize(
        screen, model.triangles, SIZE, SIZE, cull_backfaces=True, znear=render.ZNEAR
    )
    separate = motion_jit(model, source, fragments, image_size=SIZE)
    np.testing.assert_array_equal(shared["coverage_3d"], separate["coverage"])
    np.testing.assert_allclose(shared["motion_3d"], separate["motion"], atol=2e-6)
    face = render_jit(model, target, image_size=SIZE)
    np.testing.assert_array_equal(face["fragments"].triangle_id, fragments.triangle_id)
    np.testing.assert_allclose(shared["rendered_3d"], np.clip(face["image"], 0.0, 1.0), atol=2e-6)
    assert 0.2 < float(shared["coverage_3d"].mean()) < 0.8


def test_the_branch_rasterizes_each_face_once(model):
    """One visibility pass for the reenacted face, shared by its render and M_3D; the source
    mesh is rasterized only for the source-visibility mask, and only when it is asked for."""
    c = jnp.asarray(coefficients(2, 12))
    traced = jax.make_jaxpr(branch_inputs, static_argnums=3)(model, c, c, SIZE)
    assert jit_calls(traced, "rasterize") == 1
    fragments = render_jit(model, c, image_size=SIZE)["fragments"]
    for asked, calls in ((False, 0), (True, 1)):
        field = functools.partial(render.motion_field, image_size=SIZE, source_visibility=asked)
        assert jit_calls(jax.make_jaxpr(field)(model, c, fragments), "rasterize") == calls


def test_render_gradients_reach_coefficients(model):
    c = jnp.asarray(coefficients(1, 9))
    target = render_jit(model, c.at[:, 225].add(0.05), image_size=SIZE)["image"]

    def loss(coeffs):
        return jnp.mean((render.render(model, coeffs, SIZE)["image"] - target) ** 2)

    grad = jax.jit(jax.grad(loss))(c)
    assert np.all(np.isfinite(grad))
    assert np.abs(grad[0, 225]) > 0  # yaw
    assert np.abs(grad[0, 144:224]).sum() > 0  # texture


def test_readme_3d_branch_example_runs():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## The 3D face branch", 1)[1].split("\n## ", 1)[0]
    namespace = {}
    exec(section.split("```python\n", 1)[1].split("```", 1)[0], namespace)
    face, m3d = namespace["face"], namespace["m3d"]
    assert face["image"].shape == (1, 256, 256, 3) and m3d["motion"].shape == (1, 256, 256, 2)
    covered = np.asarray(m3d["coverage"][0]) > 0
    np.testing.assert_array_equal(covered, np.asarray(face["fragments"].triangle_id[0]) >= 0)
    # The driver turned its head: on the face, M_3D points elsewhere than the identity.
    identity = np.asarray(coordinate_grid(256, 256))
    assert np.abs(np.asarray(m3d["motion"][0]) - identity)[covered].max() > 0.05
