"""Reading and writing the frames of one clip: an .mp4 (ffmpeg through PyAV) or a folder of
PNG/JPEG frames, with the checks that let a build skip a bad clip instead of aborting.

Nothing here imports JAX: these functions run in the build's worker processes.
"""

import io
import os
from collections.abc import Sequence
from pathlib import Path

import av
import numpy as np
from PIL import Image

FRAME_SUFFIXES = (".png", ".jpg", ".jpeg")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class ClipError(ValueError):
    """A clip that cannot be used; the message says why (the build reports it and skips)."""


def decode_video(path: str | os.PathLike) -> list[np.ndarray]:
    """All frames of a video file as [H, W, 3] uint8 RGB arrays.

    Raises ClipError for a file ffmpeg cannot open or decode, or one that yields fewer frames
    than its container declares (truncated).
    """
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ClipError("no video stream")
            stream = container.streams.video[0]
            declared = stream.frames  # 0 when the container does not say
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    except (av.error.FFmpegError, OSError, EOFError) as e:  # corrupt, truncated, unreadable
        raise ClipError(f"ffmpeg cannot decode it: {e}") from e
    if declared and len(frames) < declared:
        raise ClipError(f"truncated: decoded {len(frames)} of {declared} frames")
    return frames


def encode_video(
    path: str | os.PathLike, frames: Sequence[np.ndarray], fps: int = 25, codec: str = "libx264"
) -> None:
    """Writes [H, W, 3] uint8 RGB frames (H, W even) as an mp4 (h264 by default, or 'mpeg4').

    Written to a temporary name and renamed, so an interrupted run leaves no partial file.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.mp4")
    height, width = frames[0].shape[:2]
    with av.open(str(tmp), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "18"}  # near-lossless: these are training images
        else:
            stream.bit_rate = 8_000_000
        for frame in frames:
            packets = stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24"))
            container.mux(packets)
        container.mux(stream.encode())  # flush the encoder
    tmp.replace(path)


def frame_files(folder: str | os.PathLike) -> list[Path]:
    """The frame images of a clip folder, in name order (FOMM names them 0000000.png, ...)."""
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in FRAME_SUFFIXES)


def _png_bit_depth(data: bytes) -> int | None:
    """Bits per channel from a PNG's IHDR (PIL silently reduces 48-bit RGB to 8-bit)."""
    return data[24] if data[:8] == _PNG_SIGNATURE and len(data) > 24 else None


def read_frame_file(path: Path, image_size: int) -> tuple[np.ndarray, bytes]:
    """One frame image -> ([S, S, 3] uint8, its file bytes); ClipError if it is not 8-bit RGB
    of the expected size (grayscale, RGBA, palette, 16-bit and wrong sizes are refused, not
    converted: they signal a preprocessing mistake worth seeing)."""
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
