"""The animate command's files: the source photo, the driving clip (a video, a folder of
images or an .npz of frames) and the result (.mp4 with the driving clip's audio, .gif, a folder
of PNGs, or an .npz of float frames). Bad input is a ValueError naming the file."""

import os
from fractions import Fraction
from pathlib import Path
from typing import NamedTuple

import numpy as np

from maskrenderer_jax import media

OUTPUT_KINDS = (".mp4", ".gif", ".npz", "folder of PNGs (a path without a suffix)")
DEFAULT_FPS = Fraction(25)


class Driving(NamedTuple):
    frames: np.ndarray  # [T, H, W, 3] float32 in [0, 1]
    fps: Fraction
    audio_from: Path | None  # the video whose audio track the result carries


def read_source(path: str | os.PathLike) -> np.ndarray:
    """Any image Pillow opens -> [H, W, 3] uint8 RGB (greyscale and RGBA converted)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--source {path}: no such file")
    return media.read_image(path)


def read_driving(path: str | os.PathLike, fps: float | None = None) -> Driving:
    """A video PyAV opens, a folder of image files (in name order) or an .npz whose `frames`
    (or only array) is [T, H, W, 3] uint8 or float in [0, 1]."""
    path = Path(path)
    if path.is_dir():
        files = media.frame_files(path)
        if not files:
            raise ValueError(f"--driving {path}: no {'/'.join(media.FRAME_SUFFIXES)} files")
        images = [media.read_image(f) for f in files]
        if any(im.shape != images[0].shape for im in images):
            raise ValueError(f"--driving {path}: the images differ in size")
        frames, rate, audio = np.stack(images), None, None
    elif not path.is_file():
        raise FileNotFoundError(f"--driving {path}: no such file or folder")
    elif path.suffix.lower() == ".npz":
        with np.load(path) as data:
            names = list(data.files)
            if "frames" not in names and len(names) != 1:
                raise ValueError(f"--driving {path}: need an array 'frames'; found {names}")
            frames = data["frames" if "frames" in names else names[0]]
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"--driving {path}: frames must be [T, H, W, 3], got {frames.shape}")
        rate, audio = None, None
    else:
        info = media.video_info(path)
        frames, rate = media.read_frames(path), info.fps
        audio = path if info.has_audio else None
    if len(frames) == 0:
        raise ValueError(f"--driving {path}: no frames")
    if fps is not None:
        rate = Fraction(fps).limit_denominator(1001)
    return Driving(media.to_float(frames), rate or DEFAULT_FPS, audio)


def output_kind(path: str | os.PathLike) -> str:
    """'.mp4', '.gif', '.npz' or 'folder'; ValueError for another suffix."""
    suffix = Path(path).suffix.lower()
    if suffix in (".mp4", ".gif", ".npz"):
        return suffix
    if suffix == "" or Path(path).is_dir():
        return "folder"
    raise ValueError(
        f"--out {path}: unknown kind {suffix!r}; write one of {', '.join(OUTPUT_KINDS)}"
    )


def write_result(
    tmp: Path, kind: str, frames: np.ndarray, fps: Fraction, audio_from: Path | None
) -> None:
    """Writes [T, H, W, 3] float32 frames in [0, 1] to `tmp` (renamed into place by the
    caller): the npz keeps them exactly; the others are 8-bit."""
    if kind == ".npz":
        np.savez(tmp, frames=frames.astype(np.float32))
    elif kind == ".mp4":
        media.write_mp4(tmp, frames, fps=fps, audio_from=audio_from)
    elif kind == ".gif":
        media.write_gif(tmp, frames, fps=fps)
    else:
        tmp.mkdir()
        digits = max(6, len(str(len(frames))))
        for i, frame in enumerate(frames):
            media.write_png(tmp / f"{i:0{digits}d}.png", frame)
