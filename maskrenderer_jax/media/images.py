"""Still images: uint8 conversion, PNG/JPEG bytes, frame folders, image files of any mode, and
grids of images. No JAX here: the data build's worker processes use it."""

import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike
from PIL import Image

FRAME_SUFFIXES = (".png", ".jpg", ".jpeg")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class ClipError(ValueError):
    """A clip or image that cannot be used; the message says why (the data build reports it
    and skips the clip; the commands report it as the user's error)."""


def to_uint8(images: ArrayLike) -> np.ndarray:
    """Images float in [0, 1] (clipped, rounded) or uint8 (unchanged) -> uint8 of the same
    shape [..., H, W, 3]."""
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return images
    if not np.issubdtype(images.dtype, np.floating):
        raise TypeError(f"images must be float in [0, 1] or uint8, got {images.dtype}")
    return np.round(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)


def to_float(images: ArrayLike) -> np.ndarray:
    """uint8 images -> float32 in [0, 1] (float input is returned as float32)."""
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return images.astype(np.float32) / 255.0
    return images.astype(np.float32)


def frame_files(folder: str | os.PathLike) -> list[Path]:
    """The frame images of a clip folder, in name order (FOMM names them 0000000.png, ...)."""
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in FRAME_SUFFIXES)


def _png_bit_depth(data: bytes) -> int | None:
    """Bits per channel from a PNG's IHDR (PIL silently reduces 48-bit RGB to 8-bit)."""
    return data[24] if data[:8] == _PNG_SIGNATURE and len(data) > 24 else None


def read_frame_file(path: Path, image_size: int) -> tuple[np.ndarray, bytes]:
    """One frame image of a data set clip -> ([S, S, 3] uint8, its file bytes); ClipError if
    it is not 8-bit RGB of the expected size (grayscale, RGBA, palette, 16-bit and wrong sizes
    are refused, not converted: in a data set they signal a preprocessing mistake)."""
    data = path.read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as image:
            mode = image.mode
            array = np.asarray(image) if mode == "RGB" else None
    except (OSError, SyntaxError, ValueError) as e:
        raise ClipError(f"{path.name}: unreadable image ({e})") from e
    depth = _png_bit_depth(data)
    if mode != "RGB" or (depth is not None and depth != 8):
        raise ClipError(
            f"{path.name}: mode {mode}{f' {depth}-bit' if depth else ''}, need 8-bit RGB"
        )
    check_frame_size(array, image_size, path.name)
    return array, data


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Any image file Pillow opens -> [H, W, 3] uint8 RGB (greyscale, palette and 16-bit
    converted; RGBA composited on white). ClipError if it cannot be read."""
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
                rgba = image.convert("RGBA")
                image = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
            elif image.mode in ("I;16", "I;16B", "I", "F"):
                scale = 1 / 257 if image.mode.startswith("I;16") else 1
                image = image.point(lambda v: v * scale).convert("L")
            return np.asarray(image.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as e:
        raise ClipError(f"{path}: not an image Pillow can read ({e})") from e


def check_frame_size(frame: np.ndarray, image_size: int, what: str) -> None:
    if frame.shape != (image_size, image_size, 3):
        h, w = frame.shape[:2]
        raise ClipError(f"{what}: {w}x{h} frames, expected {image_size}x{image_size}")


def encode_image(frame: np.ndarray, image_format: str = "png") -> bytes:
    """[H, W, 3] uint8 -> PNG or JPEG bytes (PNG is lossless; JPEG q95 is ~4x smaller)."""
    out = io.BytesIO()
    if image_format == "png":
        # Level 3 is within a few % of the default's size at a fraction of its time.
        Image.fromarray(frame).save(out, format="PNG", compress_level=3)
    elif image_format == "jpeg":
        Image.fromarray(frame).save(out, format="JPEG", quality=95)
    else:
        raise ValueError(f"image_format must be png or jpeg, got {image_format!r}")
    return out.getvalue()


def decode_image(data: bytes, image_size: int | None = None) -> np.ndarray:
    """PNG/JPEG bytes -> [S, S, 3] uint8 RGB, resized (antialiased) when image_size differs."""
    with Image.open(io.BytesIO(data)) as image:
        if image_size is not None and image.size != (image_size, image_size):
            if image.format == "JPEG":
                image.draft("RGB", (image_size, image_size))  # DCT-domain downscale: cheap
            image = image.convert("RGB").resize((image_size, image_size), Image.BICUBIC)
        return np.asarray(image.convert("RGB"))


def resize(image: ArrayLike, height: int, width: int) -> np.ndarray:
    """[H, W, 3] uint8 -> [height, width, 3] uint8, Pillow's antialiased bicubic."""
    image = to_uint8(image)
    if image.shape[:2] == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BICUBIC))


def image_grid(rows: Sequence[ArrayLike], background: int = 255) -> np.ndarray:
    """Lays out rows of images: row r, column n is rows[r][n].

    Args:
      rows: R arrays [N_r, H, W, 3] float in [0, 1] or uint8, all of one H, W; rows shorter
        than the longest (e.g. a single source image) are filled with `background`.
      background: uint8 grey level of the empty cells.
    Returns:
      [R * H, N * W, 3] uint8, N = max N_r.
    """
    rows = [to_uint8(r) for r in rows]
    if not rows or any(r.ndim != 4 or r.shape[1:] != rows[0].shape[1:] for r in rows):
        raise ValueError(f"rows must be [N, H, W, 3] of one H, W; got {[r.shape for r in rows]}")
    _, h, w, c = rows[0].shape
    n = max(len(r) for r in rows)
    grid = np.full((len(rows), n, h, w, c), background, np.uint8)
    for i, row in enumerate(rows):
        grid[i, : len(row)] = row
    return grid.transpose(0, 2, 1, 3, 4).reshape(len(rows) * h, n * w, c)


def write_png(path: str | os.PathLike, image: ArrayLike) -> Path:
    """Writes [H, W, 3] float in [0, 1] or uint8 RGB as a PNG (its folder is created)."""
    image = to_uint8(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image must be [H, W, 3], got {image.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_image(image, "png"))
    return path
