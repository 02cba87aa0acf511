"""The animate command's face handling on the host: FOMM-style square crops around the face a
real detector finds (tracked and smoothed through a clip), and LivePortrait-style paste-back of
the animated crop into the original photo.

A crop is a square (cx, cy, side) in the image's pixels (centres at integers, x right, y down,
as maskrenderer_jax.evaluation.dlib_faces). dlib's frontal-face box runs from the brows to the
chin; VoxCeleb's crops (what FOMM and MaskRenderer were trained on) show the whole head with
some background, so the square is MARGIN times the box's larger side, its centre moved up by
RAISE of the box height (the forehead the box leaves out).
"""

from typing import NamedTuple

import numpy as np

from maskrenderer_jax import media

MARGIN = 1.8
RAISE = 0.1
DETECT_MAX_SIDE = 512  # larger frames are scaled down for detection (HOG time grows with area)
SMOOTH_FRAMES = 5  # the centred moving average over the clip's crops (FOMM crops a whole tube)


class Track(NamedTuple):
    squares: np.ndarray  # [T, 3] float64 (cx, cy, side) per frame
    found: np.ndarray  # [T] bool: a face was detected in the frame
    lost: int  # frames without a detection (they keep the last crop)


def square_of_box(box: np.ndarray) -> np.ndarray:
    """Face box (x0, y0, x1, y1) outer edges -> the crop square (cx, cy, side)."""
    x0, y0, x1, y1 = np.asarray(box, np.float64)
    w, h = x1 - x0, y1 - y0
    return np.array([(x0 + x1) / 2, (y0 + y1) / 2 - RAISE * h, MARGIN * max(w, h)])


def detect_boxes(faces, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The largest face per image: (boxes [T, 4] in the images' pixels, NaN where none; found
    [T]). `faces` is an evaluation.dlib_faces.DlibFaces; images [T, H, W, 3] uint8."""
    _, h, w, _ = images.shape
    factor = min(1.0, DETECT_MAX_SIDE / max(h, w))
    if factor < 1.0:
        small_h, small_w = round(h * factor), round(w * factor)
        small = np.stack([media.resize(image, small_h, small_w) for image in images])
        boxes, found = faces.detect(small)
        # pixel centres at integers on both: x -> (x + 0.5) / s - 0.5; edges likewise
        scale = np.array([w / small_w, h / small_h] * 2)
        return (boxes + 0.5) * scale - 0.5, found
    return faces.detect(images)


def track(faces, frames: np.ndarray) -> Track:
    """Crop squares through a clip: detected per frame, a lost frame keeps the last square (or
    the first found one, before any), then a centred moving average over SMOOTH_FRAMES frames
    so the crop does not jitter. ValueError if no frame has a face."""
    boxes, found = detect_boxes(faces, frames)
    if not found.any():
        raise ValueError("no face found in any frame")
    squares = np.full((len(frames), 3), np.nan)
    squares[found] = [square_of_box(b) for b in boxes[found]]
    last = squares[np.argmax(found)]
    for i in range(len(squares)):
        if found[i]:
            last = squares[i]
        else:
            squares[i] = last
    half = SMOOTH_FRAMES // 2
    padded = np.concatenate([squares[:1].repeat(half, 0), squares, squares[-1:].repeat(half, 0)])
    kernel = np.ones(SMOOTH_FRAMES) / SMOOTH_FRAMES
    smooth = np.stack([np.convolve(padded[:, k], kernel, "valid") for k in range(3)], axis=1)
    return Track(smooth, found, int((~found).sum()))


def _bounds(square: np.ndarray) -> tuple[int, int, int]:
    """(left, top, side) whole pixels of a square."""
    cx, cy, side = square
    side = max(2, int(round(side)))
    return int(round(cx - side / 2 + 0.5)), int(round(cy - side / 2 + 0.5)), side


def crop(image: np.ndarray, square: np.ndarray, size: int) -> np.ndarray:
    """[H, W, 3] uint8 -> the square resized to [size, size, 3] uint8; outside the image is
    the nearest edge pixel (as FOMM's crops of faces near the border)."""
    left, top, side = _bounds(square)
    h, w = image.shape[:2]
    pad = max(0, -left, -top, left + side - w, top + side - h)
    if pad:
        image = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    patch = image[top + pad : top + pad + side, left + pad : left + pad + side]
    return media.resize(patch, size, size)


def blend_mask(side: int, feather: float = 0.15) -> np.ndarray:
    """[side, side] float32 in [0, 1]: 1 inside a rounded square, falling linearly to 0 over
    the outer `feather` of the half-width (LivePortrait blends with a soft face mask)."""
    u = (np.arange(side) + 0.5) / side * 2 - 1
    d = (np.abs(u)[:, None] ** 4 + np.abs(u)[None, :] ** 4) ** 0.25
    return np.clip((1 - d) / feather, 0.0, 1.0).astype(np.float32)


def paste_back(photo: np.ndarray, face: np.ndarray, square: np.ndarray) -> np.ndarray:
    """The animated crop blended into the photo at its square.

    Args:
      photo: [H, W, 3] uint8, the original source photo.
      face: [S, S, 3] float in [0, 1] or uint8, the model's frame for the crop `square`.
      square: (cx, cy, side), the crop the face came from.
    Returns:
      [H, W, 3] uint8; outside the square exactly the photo.
    """
    left, top, side = _bounds(square)
    h, w = photo.shape[:2]
    patch = media.resize(face, side, side).astype(np.float32)
    mask = blend_mask(side)[..., None]
    x0, y0, x1, y1 = max(0, left), max(0, top), min(w, left + side), min(h, top + side)
    out = photo.copy()
    if x0 >= x1 or y0 >= y1:
        return out
    region = photo[y0:y1, x0:x1].astype(np.float32)
    sub = np.s_[y0 - top : y1 - top, x0 - left : x1 - left]
    blended = mask[sub] * patch[sub] + (1 - mask[sub]) * region
    out[y0:y1, x0:x1] = np.round(blended).clip(0, 255).astype(np.uint8)
    return out


def _normalized(landmarks: np.ndarray) -> np.ndarray:
    """FOMM demo.py's normalize_kp for find_best_frame: centred, divided by sqrt(hull area)."""
    from scipy.spatial import ConvexHull

    centred = landmarks - landmarks.mean(axis=0, keepdims=True)
    return centred / np.sqrt(ConvexHull(centred).volume)


def best_frame(faces, source: np.ndarray, driving: np.ndarray) -> int:
    """FOMM's find_best_frame: the driving frame whose normalised 68 landmarks are closest (sum
    of squares) to the source's; frames without a face are passed over; 0 if none has one.

    Args:
      faces: an evaluation.dlib_faces.DlibFaces.
      source: [H, W, 3] float in [0, 1]; driving: [T, H, W, 3].
    """
    points, found = faces.landmarks68(source[None])
    if not found[0]:
        return 0
    reference = _normalized(points[0].astype(np.float64))
    best, best_norm = 0, np.inf
    for start in range(0, len(driving), 16):
        points, found = faces.landmarks68(driving[start : start + 16])
        for i in np.flatnonzero(found):
            norm = ((reference - _normalized(points[i].astype(np.float64))) ** 2).sum()
            if norm < best_norm:
                best, best_norm = start + int(i), norm
    return best
