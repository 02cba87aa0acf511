"""Video and image files of reenactment results. Encoding and decoding are the data pipeline's
(`data_pipeline.frames_io`); this module adapts model outputs (float in [0, 1]) to them and
lays frames out in grids."""

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

from data_pipeline import frames_io


def to_uint8(images: ArrayLike) -> np.ndarray:
    """Images float in [0, 1] (clipped, rounded) or uint8 (unchanged) -> uint8 of the same
    shape [..., H, W, 3]."""
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return images
    if not np.issubdtype(images.dtype, np.floating):
        raise TypeError(f"images must be float in [0, 1] or uint8, got {images.dtype}")
    return np.round(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)


def _pad_even(frames: np.ndarray) -> np.ndarray:
    """yuv420p subsamples chroma by 2: an odd height / width gets one edge-replicated row /
    column at the bottom / right."""
    _, h, w, _ = frames.shape
    return np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def write_mp4(path: str | os.PathLike, frames: ArrayLike, fps: int = 25) -> Path:
    """Writes frames as an H.264 (yuv420p, crf 18) mp4.

    Args:
      path: the .mp4 to write (its folder is created); written atomically.
      frames: [T, H, W, 3] float in [0, 1] or uint8, RGB. Odd H / W are padded to even by
        replicating the last row / column (yuv420p needs even sizes), so `read_frames` then
        returns [T, H + H % 2, W + W % 2, 3].
      fps: frames per second.
    Returns:
      The path.
    """
    frames = to_uint8(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(f"frames must be [T, H, W, 3] with T >= 1, got {frames.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames_io.encode_video(path, list(_pad_even(frames)), fps=fps)
    return path


def read_frames(path: str | os.PathLike) -> np.ndarray:
    """All frames of a video file -> [T, H, W, 3] uint8 RGB (frames_io.ClipError if it cannot
    be decoded or is truncated)."""
    frames = frames_io.decode_video(path)
    if not frames:
        raise frames_io.ClipError(f"{path}: no frames")
    return np.stack(frames)


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
    path.write_bytes(frames_io.encode_image(image, "png"))
    return path
