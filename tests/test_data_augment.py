"""FOMM's augmentation: colour jitter (torchvision's PIL path) does what each of its four
operations means, once per clip; the coefficient mirror matches the morphable model's
geometry and lighting of a mirrored face."""

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from data_pipeline import augment
from maskrenderer_jax.face3d import morphable_model as mm
from maskrenderer_jax.face3d import synthetic_bfm


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    coarse = rng.uniform(0, 255, (8, 8, 3)).astype(np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((32, 32), Image.BILINEAR))


def jitter(image_u8, op, factor):
    params = np.array([1, 1, 1, 0, op, *[k for k in range(4) if k != op]], np.float32)
    params[op] = factor
    return augment.color_jitter(image_u8, params).astype(np.float32)


def test_brightness_scales(image):
    np.testing.assert_allclose(jitter(image, 0, 1.1), np.clip(image * 1.1, 0, 255), atol=1)
    np.testing.assert_allclose(jitter(image, 0, 0.9), image * 0.9, atol=1)


def test_contrast_blends_towards_the_mean_grey(image):
    grey = np.mean(image.astype(np.float32) @ [0.299, 0.587, 0.114])
    np.testing.assert_allclose(jitter(image, 1, 0.9), 0.9 * image + 0.1 * grey, atol=1.5)


def test_saturation_blends_towards_each_pixels_grey(image):
    grey = (image.astype(np.float32) @ [0.299, 0.587, 0.114])[..., None]
    np.testing.assert_allclose(jitter(image, 2, 0.9), 0.9 * image + 0.1 * grey, atol=1.5)


def test_hue_rotates_colours():
    red = np.zeros((4, 4, 3), np.uint8)
    red[..., 0] = 255
    np.testing.assert_allclose(jitter(red, 3, 1 / 3)[0, 0], [0, 255, 0], atol=8)  # red -> green
    np.testing.assert_allclose(jitter(red, 3, -1 / 3)[0, 0], [0, 0, 255], atol=8)  # -> blue


def test_off_and_the_same_transform_for_every_frame_of_a_clip(image):
    off = np.array([1, 1, 1, 0, 3, 2, 1, 0], np.float32)
    assert augment.color_jitter(image, off) is image
    params = augment.jitter_params(np.random.default_rng(2), 0.1)
    clip = np.stack([image, image[::-1]])
    out = augment.color_jitter(clip, params)
    np.testing.assert_array_equal(out[1], augment.color_jitter(image[::-1], params))
    assert np.abs(out.astype(float) - clip).mean() > 1  # it did something


def test_jitter_params_are_in_range():
    rng = np.random.default_rng(1)
    params = np.stack([augment.jitter_params(rng, 0.1) for _ in range(200)])
    assert np.all(np.abs(params[:, :3] - 1) <= 0.1) and np.all(np.abs(params[:, 3]) <= 0.1)
    assert all(sorted(p[4:]) == [0, 1, 2, 3] for p in params)
    assert params[:, 4].std() > 0.5  # the order varies


def test_mirror_coefficients_mirror_pose_and_lighting():
    # A symmetric face (mean shape, no id/exp): the mirrored coefficients must give the
    # x-mirrored mesh, and lighting on mirrored normals equal to the original's.
    model = synthetic_bfm.synthetic_bfm(0, grid=(16, 20))
    c = np.zeros((1, mm.NUM_COEFFS), np.float32)
    c[0, 224:227] = [0.2, -0.3, 0.15]  # pitch, yaw, roll
    c[0, 227:254] = np.random.default_rng(0).normal(0, 0.3, 27)
    c[0, 254:257] = [0.1, -0.05, 0.2]
    original = mm.reconstruct(model, jnp.asarray(c), 224)
    mirrored = mm.reconstruct(model, jnp.asarray(mm.mirror_coefficients(c)), 224)
    # The grid's vertex (row, column) mirrors to (row, 15 - column).
    order = np.arange(16 * 20).reshape(20, 16)[:, ::-1].reshape(-1)
    flip = np.array([-1.0, 1.0, 1.0])
    np.testing.assert_allclose(
        mirrored["vertices"][0, order] * flip, original["vertices"][0], atol=1e-4
    )
    normals = np.asarray(original["normals"])
    gamma = jnp.asarray(c[:, 227:254])
    mirrored_gamma = jnp.asarray(mm.mirror_coefficients(c)[:, 227:254])
    np.testing.assert_allclose(
        mm.irradiance(jnp.asarray(normals * flip), mirrored_gamma),
        mm.irradiance(jnp.asarray(normals), gamma),
        atol=1e-5,
    )
