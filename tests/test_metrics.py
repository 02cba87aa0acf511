"""evaluation/metrics.py against the implementations the papers' numbers came from
(scikit-image's SSIM/PSNR, pytorch-fid's Fréchet distance) and known answers."""

import ast
import importlib.util

import jax
import numpy as np
import pytest
import skimage.metrics
from scipy import linalg

from maskrenderer_jax.evaluation import metrics
from maskrenderer_jax.face3d import morphable_model as mm

RTOL = 1e-5


def images(seed, batch=3, height=40, width=52):
    """Smooth random images (SSIM of white noise is ~0 and tests little)."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0, 1, (batch, height // 4, width // 4, 3))
    return np.clip(jax.image.resize(base, (batch, height, width, 3), "linear"), 0, 1)


@pytest.fixture(scope="module")
def pair():
    a = np.asarray(images(0), np.float32)
    noise = np.random.default_rng(1).normal(0, 0.05, a.shape)
    return a, np.clip(a + noise, 0, 1).astype(np.float32)


def test_ssim_matches_scikit_image(pair):
    a, b = pair
    got = np.asarray(jax.jit(metrics.ssim)(a, b))
    expected = [
        skimage.metrics.structural_similarity(
            x.astype(np.float64),
            y.astype(np.float64),
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=1.0,
            channel_axis=-1,
        )  # fmt: skip
        for x, y in zip(a, b, strict=True)
    ]
    np.testing.assert_allclose(got, expected, rtol=RTOL)
    assert 0.3 < got.min() < got.max() < 0.99  # not vacuous
    np.testing.assert_allclose(metrics.ssim(a, a), 1.0, rtol=1e-6)


def test_psnr_l1_match_scikit_image(pair):
    a, b = pair
    expected = [
        skimage.metrics.peak_signal_noise_ratio(x.astype(np.float64), y.astype(np.float64),
                                                data_range=1.0)
        for x, y in zip(a, b, strict=True)
    ]  # fmt: skip
    np.testing.assert_allclose(metrics.psnr(a, b), expected, rtol=RTOL)
    np.testing.assert_allclose(metrics.l1(a, b), np.abs(a - b).mean(axis=(1, 2, 3)), rtol=RTOL)
    assert np.all(np.isinf(metrics.psnr(a, a))) and np.all(metrics.l1(a, a) == 0)


def test_masked_metrics_restrict_to_the_mask(pair):
    a, b = pair
    mask = np.zeros(a.shape[:3], np.float32)
    mask[:, 12:30, 15:40] = 1.0
    # Outside the mask, b is anything: the masked PSNR must not see it, nor the masked SSIM
    # beyond the 5 px reach of its window.
    far = np.ones_like(mask, bool)
    far[:, 7:35, 10:45] = False
    b_outside = np.where(far[..., None], 1.0 - b, b)
    b_near = np.where(mask[..., None] > 0, b, 1.0 - b)
    np.testing.assert_allclose(
        metrics.masked_psnr(a, b, mask), metrics.masked_psnr(a, b_near, mask), rtol=RTOL
    )
    np.testing.assert_allclose(
        metrics.masked_ssim(a, b, mask), metrics.masked_ssim(a, b_outside, mask), rtol=RTOL
    )
    inside = (slice(None), slice(12, 30), slice(15, 40))
    mse = ((a - b)[inside] ** 2).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(metrics.masked_psnr(a, b, mask), 10 * np.log10(1 / mse), rtol=RTOL)
    # SSIM map averaged over the mask inside the valid region (5 px per side cropped).
    full = np.stack([
        skimage.metrics.structural_similarity(
            x.astype(np.float64), y.astype(np.float64), gaussian_weights=True, sigma=1.5,
            use_sample_covariance=False, data_range=1.0, channel_axis=-1, full=True,
        )[1][5:-5, 5:-5]
        for x, y in zip(a, b, strict=True)
    ])  # fmt: skip
    weights = mask[:, 5:-5, 5:-5, None]
    expected = (full * weights).sum(axis=(1, 2, 3)) / (3 * weights.sum(axis=(1, 2, 3)))
    np.testing.assert_allclose(metrics.masked_ssim(a, b, mask), expected, rtol=RTOL)
    ones = np.ones_like(mask)
    np.testing.assert_allclose(metrics.masked_ssim(a, b, ones), metrics.ssim(a, b), rtol=RTOL)


def pytorch_fid_frechet():
    """pytorch-fid 0.3's own `calculate_frechet_distance`, taken from its installed source
    (its module imports torchvision at the top, which does not import beside this torch)."""
    path = importlib.util.find_spec("pytorch_fid").submodule_search_locations[0]
    tree = ast.parse(open(f"{path}/fid_score.py").read())
    fn = next(n for n in tree.body if getattr(n, "name", "") == "calculate_frechet_distance")
    namespace = {"np": np, "linalg": linalg}
    exec(compile(ast.Module([fn], []), "fid_score.py", "exec"), namespace)
    return namespace["calculate_frechet_distance"]


def test_frechet_distance_matches_pytorch_fid():
    reference = pytorch_fid_frechet()
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, (200, 16))
    b = rng.normal(0.3, 1.5, (150, 16)) @ rng.normal(0, 1, (16, 16))
    stats = [(x.mean(0), np.cov(x, rowvar=False)) for x in (a, b)]
    expected = reference(*stats[0], *stats[1])
    np.testing.assert_allclose(metrics.frechet_distance(a, b), expected, rtol=RTOL)
    assert metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    # Fewer samples than dimensions: singular covariances take the eps offset path there too.
    c, d = rng.normal(0, 1, (5, 16)), rng.normal(1, 1, (6, 16))
    stats = [(x.mean(0), np.cov(x, rowvar=False)) for x in (c, d)]
    np.testing.assert_allclose(
        metrics.frechet_distance(c, d), reference(*stats[0], *stats[1]), rtol=1e-4
    )
    with pytest.raises(ValueError, match="N >= 2"):
        metrics.frechet_distance(a[:1], b)


def face_points(seed, batch=4):
    rng = np.random.default_rng(seed)
    return (rng.uniform(60, 200, (batch, 68, 2))).astype(np.float32)


def test_akd_nme_known_answers():
    p = face_points(0)
    shifted = p + np.array([1.5, -0.5], np.float32)
    np.testing.assert_allclose(metrics.akd(p, shifted), 1.0, rtol=RTOL)  # (1.5 + 0.5) / 2
    interocular = np.linalg.norm(p[:, 36] - p[:, 45], axis=-1)
    np.testing.assert_allclose(metrics.nme(shifted, p), np.hypot(1.5, 0.5) / interocular, rtol=RTOL)
    missing = p.copy()
    missing[1] = np.nan
    values = np.asarray(metrics.akd(missing, shifted))
    assert np.isnan(values[1]) and np.isfinite(values[[0, 2, 3]]).all()
    assert metrics.aggregate("akd", values) == (pytest.approx(1.0, rel=RTOL), 1)


def test_similarities_known_answers():
    p = face_points(1)
    # KSIM: invariant to where the face is and how large; 1 for the same configuration.
    np.testing.assert_allclose(metrics.ksim(p, 1.7 * p + 30.0), 1.0, rtol=RTOL)
    assert np.all(metrics.ksim(p, face_points(2)) < 0.5)
    e = np.random.default_rng(0).normal(size=(4, 512)).astype(np.float32)
    np.testing.assert_allclose(metrics.isim(e, 3 * e), 1.0, rtol=RTOL)
    np.testing.assert_allclose(metrics.isim(e, -e), -1.0, rtol=RTOL)
    np.testing.assert_allclose(metrics.aid(e, 3 * e), 0.0, atol=1e-6)
    np.testing.assert_allclose(metrics.aid(e, -e), 4.0, rtol=RTOL)
    cos = (
        np.sum(e[:2] * e[2:], -1) / np.linalg.norm(e[:2], axis=-1) / np.linalg.norm(e[2:], axis=-1)
    )
    np.testing.assert_allclose(metrics.aid(e[:2], e[2:]), 2 - 2 * cos, rtol=1e-4)
    assert metrics.csim is metrics.isim


def test_pose_metrics_known_answers():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 0.2, (3, mm.NUM_COEFFS)).astype(np.float32)
    b = a.copy()
    angle = slice(224, 227)  # id 80 | exp 64 | tex 80 | angle 3
    b[:, angle] += np.deg2rad([3.0, -4.0, 0.0]).astype(np.float32)
    np.testing.assert_allclose(metrics.prmse(a, b), np.sqrt(25 / 3), rtol=1e-4)
    np.testing.assert_allclose(metrics.epd(a, b), np.deg2rad(5.0), rtol=1e-4)
    b[:, 80:144] += 0.5 / 8  # exp, 64 entries: norm 0.5
    b[:, angle] = a[:, angle]
    np.testing.assert_allclose(metrics.epd(a, b), 0.5, rtol=1e-4)
    np.testing.assert_allclose(metrics.psim(a, b), 1.0, rtol=RTOL)
    # The identity, texture and lighting do not enter the pose/expression metrics.
    c = a.copy()
    c[:, :80] += 1.0
    assert np.all(metrics.epd(a, c) == 0) and np.all(metrics.prmse(a, c) == 0)
    value, skipped = metrics.aggregate("prmse", np.array([3.0, 4.0]))
    assert value == pytest.approx(np.sqrt(12.5)) and skipped == 0


def test_aggregate_refuses_missing_values_where_none_may_be():
    with pytest.raises(ValueError, match="l1: 1 frames"):
        metrics.aggregate("l1", np.array([0.1, np.nan]))
    assert np.isnan(metrics.aggregate("akd", np.array([np.nan]))[0])


def test_macs_per_frame_counts_a_matmul():
    x = jax.ShapeDtypeStruct((4, 32), np.float32)
    w = jax.ShapeDtypeStruct((32, 16), np.float32)
    # 4 frames x 32 x 16 multiply-adds.
    assert metrics.macs_per_frame(lambda x, w: x @ w, x, w, frames=4) == pytest.approx(
        512, rel=0.05
    )
