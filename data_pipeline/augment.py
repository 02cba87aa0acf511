"""FOMM's training augmentation (modules/augmentation.py of first-order-model): horizontal flip
and colour jitter applied identically to the frames of one clip, and time flip (swap source and
driving). Parameters are drawn by the sampler (`jitter_params`, from the example's own rng) and
applied here as pure numpy functions, so a batch depends only on the seed and its index.

Colour jitter is torchvision's ColorJitter (which FOMM calls): brightness, contrast,
saturation factors in [1 - s, 1 + s], hue shift in [-s, s] of a turn, in a random order.
"""

import numpy as np
from PIL import Image, ImageEnhance

from maskrenderer_jax.face3d import morphable_model as mm


def jitter_params(rng: np.random.Generator, strength: float) -> np.ndarray:
    """[8] float32: brightness, contrast, saturation factors, hue shift, then the order of the
    four operations (a permutation of 0..3)."""
    s = strength
    factors = [*rng.uniform(max(0.0, 1 - s), 1 + s, 3), rng.uniform(-s, s)]
    return np.array([*factors, *rng.permutation(4)], np.float32)


def _adjust_hue(image: Image.Image, hue: float) -> Image.Image:
    """torchvision's adjust_hue on a PIL image: H (uint8) shifted by int(hue * 255), wrapping."""
    h, s, v = image.convert("HSV").split()
    shifted = (np.asarray(h, np.int16) + int(hue * 255)) % 256
    return Image.merge("HSV", (Image.fromarray(shifted.astype(np.uint8)), s, v)).convert("RGB")


def color_jitter(frames: np.ndarray, params: np.ndarray) -> np.ndarray:
    """The same jitter on every frame of [..., H, W, 3] uint8 (one clip) -> uint8.

    Runs torchvision's PIL path (ImageEnhance, HSV), which FOMM's ColorJitter calls on its
    PIL frames: the reference behaviour, rounding included, at C speed.
    """
    brightness, contrast, saturation, hue = (float(p) for p in params[:4])
    if (brightness, contrast, saturation, hue) == (1.0, 1.0, 1.0, 0.0):
        return frames  # jitter off
    order = params[4:].astype(np.int64)
    flat = frames.reshape(-1, *frames.shape[-3:])
    out = np.empty_like(flat)
    for i, frame in enumerate(flat):
        image = Image.fromarray(frame)
        for op in order:
            if op == 0:
                image = ImageEnhance.Brightness(image).enhance(brightness)
            elif op == 1:
                image = ImageEnhance.Contrast(image).enhance(contrast)
            elif op == 2:
                image = ImageEnhance.Color(image).enhance(saturation)
            elif hue != 0.0:
                image = _adjust_hue(image, hue)
        out[i] = np.asarray(image)
    return out.reshape(frames.shape)


# Under x -> -x (a horizontal image flip about the principal point), R = Rz Ry Rx becomes
# M R M = Rz(-z) Ry(-y) Rx(x), tx -> -tx, and the SH lighting terms odd in x (basis 3: -x,
# 4: xy, 7: -xz of Deep3DFace's [1, -y, z, -x, xy, -yz, ..., -xz, ...]) change sign.
_START = {name: start for name, start, _ in mm.COEFF_GROUPS}
_ANGLE, _GAMMA, _TRANS = _START["angle"], _START["gamma"], _START["trans"]
_MIRROR_SIGN = np.ones(mm.NUM_COEFFS, np.float32)
_MIRROR_SIGN[[_ANGLE + 1, _ANGLE + 2, _TRANS]] = -1
for _channel in range(3):
    _MIRROR_SIGN[[_GAMMA + 9 * _channel + k for k in (3, 4, 7)]] = -1


def mirror_coefficients(coeffs: np.ndarray) -> np.ndarray:
    """[..., 257] coefficients of a face -> those of its horizontally flipped image.

    Exact for pose, translation and lighting. id, exp and tex are left as they are: a 3DMM's
    bases are not mirror pairs, so their mirror image is only approximated by themselves
    (exact for symmetric faces); batches carry `flipped` so a loss can tell.
    """
    return coeffs * _MIRROR_SIGN
