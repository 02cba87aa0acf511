"""FOMM's training augmentation (modules/augmentation.py of first-order-model): horizontal flip
and colour jitter applied identically to the frames of one clip, and time flip (swap source and
driving). Parameters are drawn by the sampler (`jitter_params`, from the example's own rng) and
applied here as pure numpy functions, so a batch depends only on the seed and its index.

Colour jitter is torchvision's ColorJitter (which FOMM calls): brightness, contrast,
saturation factors in [1 - s, 1 + s], hue shift in [-s, s] of a turn, in a random order.
"""

import numpy as np
from PIL import Image, ImageEnhance


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
