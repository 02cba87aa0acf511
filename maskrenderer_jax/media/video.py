"""Video files through PyAV (ffmpeg): decoding with the checks that let a data build skip a bad
clip, H.264 encoding with the audio track of another file carried over, and GIFs.

No JAX here: the data build's worker processes use it.
"""

import os
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import NamedTuple

import av
import numpy as np
from numpy.typing import ArrayLike
from PIL import Image

from maskrenderer_jax.media.images import ClipError, to_uint8

# Audio codecs an .mp4 holds as they are; any other track (PCM from .mov / .avi / .mkv, ...) is
# re-encoded to AAC.
MP4_AUDIO_CODECS = ("aac", "mp3", "ac3", "eac3", "alac", "opus", "flac")


class VideoInfo(NamedTuple):
    fps: Fraction  # the video stream's average frame rate (25 when the container has none)
    has_audio: bool


def video_info(path: str | os.PathLike) -> VideoInfo:
    """The frame rate and whether there is an audio track; ClipError if ffmpeg cannot open it."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ClipError(f"{path}: no video stream")
            rate = container.streams.video[0].average_rate
            return VideoInfo(
                Fraction(rate) if rate else Fraction(25), bool(container.streams.audio)
            )
    except (av.error.FFmpegError, OSError, EOFError) as e:
        raise ClipError(f"{path}: ffmpeg cannot open it ({e})") from e


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


def read_frames(path: str | os.PathLike) -> np.ndarray:
    """All frames of a video file -> [T, H, W, 3] uint8 RGB (ClipError if it cannot be decoded,
    is truncated or has no frames)."""
    try:
        frames = decode_video(path)
    except ClipError as e:
        raise ClipError(f"{path}: {e}") from e
    if not frames:
        raise ClipError(f"{path}: no frames")
    return np.stack(frames)


def _copy_audio(container, source: av.container.InputContainer):
    """Adds `source`'s first audio track to `container`; returns a function that muxes it (to
    call after the video: the mp4 muxer interleaves by timestamp)."""
    audio_in = source.streams.audio[0]
    if audio_in.codec_context.name in MP4_AUDIO_CODECS:
        audio_out = container.add_stream_from_template(audio_in)

        def mux():
            for packet in source.demux(audio_in):
                if packet.dts is not None:
                    packet.stream = audio_out
                    container.mux(packet)

        return mux
    audio_out = container.add_stream("aac", rate=audio_in.rate)
    audio_out.layout = audio_in.layout

    def transcode():
        for frame in source.decode(audio_in):
            frame.pts = None
            container.mux(audio_out.encode(frame))
        container.mux(audio_out.encode())

    return transcode


def encode_video(
    path: str | os.PathLike,
    frames: Sequence[np.ndarray],
    fps: float | Fraction = 25,
    codec: str = "libx264",
    *,
    audio_from: str | os.PathLike | None = None,
) -> None:
    """Writes [H, W, 3] uint8 RGB frames (H, W even) as an mp4 (h264 by default, or 'mpeg4'),
    with the first audio track of `audio_from` (a video or audio file) when it has one.

    Written to a temporary name and renamed, so an interrupted run leaves no partial file.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.mp4")
    height, width = frames[0].shape[:2]
    source = av.open(str(audio_from)) if audio_from is not None else None
    try:
        with av.open(str(tmp), "w") as container:
            rate = Fraction(fps).limit_denominator(1001)
            stream = container.add_stream(codec, rate=rate)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            if codec == "libx264":
                stream.options = {"crf": "18"}  # near-lossless: these are training images
            else:
                stream.bit_rate = 8_000_000
            mux_audio = _copy_audio(container, source) if source and source.streams.audio else None
            for frame in frames:
                packets = stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24"))
                container.mux(packets)
            container.mux(stream.encode())  # flush the encoder
            if mux_audio is not None:
                mux_audio()
        tmp.replace(path)
    finally:
        if source is not None:
            source.close()
        tmp.unlink(missing_ok=True)


def _pad_even(frames: np.ndarray) -> np.ndarray:
    """yuv420p subsamples chroma by 2: an odd height / width gets one edge-replicated row /
    column at the bottom / right."""
    _, h, w, _ = frames.shape
    return np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def write_mp4(
    path: str | os.PathLike,
    frames: ArrayLike,
    fps: float | Fraction = 25,
    *,
    audio_from: str | os.PathLike | None = None,
) -> Path:
    """Writes frames as an H.264 (yuv420p, crf 18) mp4.

    Args:
      path: the .mp4 to write (its folder is created); written atomically.
      frames: [T, H, W, 3] float in [0, 1] or uint8, RGB. Odd H / W are padded to even by
        replicating the last row / column (yuv420p needs even sizes), so `read_frames` then
        returns [T, H + H % 2, W + W % 2, 3].
      fps: frames per second.
      audio_from: a file whose first audio track is copied in (re-encoded to AAC when an mp4
        cannot hold its codec).
    Returns:
      The path.
    """
    frames = to_uint8(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(f"frames must be [T, H, W, 3] with T >= 1, got {frames.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    encode_video(path, list(_pad_even(frames)), fps=fps, audio_from=audio_from)
    return path


def write_gif(path: str | os.PathLike, frames: ArrayLike, fps: float | Fraction = 25) -> Path:
    """Writes [T, H, W, 3] float in [0, 1] or uint8 frames as a looping GIF (Pillow's palette
    quantisation per frame; GIF delays are whole centiseconds)."""
    frames = to_uint8(frames)
    images = [Image.fromarray(f) for f in frames]
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:],
                   duration=round(1000 / float(fps)), loop=0)  # fmt: skip
    return Path(path)
