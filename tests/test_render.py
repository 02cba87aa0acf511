"""Rendering the 3DMM and the 3D motion field M_3D, on the synthetic model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskrenderer_jax.face3d import morphable_model as mm
from maskrenderer_jax.face3d import render, synthetic_bfm
from maskrenderer_jax.models.layers import coordinate_grid, warp

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
motion_jit = jax.jit(render.motion_field, static_argnames=("image_size",))


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
    out = motion_jit(model, c, c, image_size=SIZE)
    covered = np.asarray(out["coverage"]) > 0
    assert covered.mean() > 0.2
    identity = np.broadcast_to(coordinate_grid(SIZE, SIZE), out["motion"].shape)
    np.testing.assert_allclose(np.asarray(out["motion"]), identity, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(out["source_visible"]) > 0, covered)


def test_warping_the_source_render_by_m3d_gives_the_target_render(model):
    source = coefficients(2, 5)
    source[:, 227:254] = 0.0  # ambient light only: the colour of a surface point is pose-free
    target = render.reenact_coefficients(source, coefficients(2, 6, pose_scale=0.2))
    flow = motion_jit(model, source, target, image_size=SIZE)
    src_img = render_jit(model, source, image_size=SIZE, antialias=False)["image"]
    tgt = render_jit(model, target, image_size=SIZE, antialias=False)
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
    out = motion_jit(model, source, target, image_size=SIZE)
    off = np.asarray(out["coverage"]) == 0
    identity = np.broadcast_to(coordinate_grid(SIZE, SIZE), out["motion"].shape)
    np.testing.assert_allclose(np.asarray(out["motion"])[off], identity[off], atol=1e-6)


def test_render_gradients_reach_coefficients(model):
    c = jnp.asarray(coefficients(1, 9))
    target = render_jit(model, c.at[:, 225].add(0.05), image_size=SIZE)["image"]

    def loss(coeffs):
        return jnp.mean((render.render(model, coeffs, SIZE)["image"] - target) ** 2)

    grad = jax.jit(jax.grad(loss))(c)
    assert np.all(np.isfinite(grad))
    assert np.abs(grad[0, 225]) > 0  # yaw
    assert np.abs(grad[0, 144:224]).sum() > 0  # texture
