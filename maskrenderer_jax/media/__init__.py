"""Media files, the one place: decoding and encoding video (the audio track carried over),
still images of any mode, frame folders, uint8 conversion and image grids. Used by the data
pipeline, inference, the training logs and `python -m maskrenderer_jax.animate`. Imports no
JAX (the data build's worker processes use it)."""

from maskrenderer_jax.media.images import (
    FRAME_SUFFIXES,
    ClipError,
    check_frame_size,
    decode_image,
    encode_image,
    frame_files,
    image_grid,
    read_frame_file,
    read_image,
    resize,
    to_float,
    to_uint8,
    write_png,
)
from maskrenderer_jax.media.video import (
    VideoInfo,
    decode_video,
    encode_video,
    read_frames,
    video_info,
    write_gif,
    write_mp4,
)

__all__ = [
    "FRAME_SUFFIXES",
    "ClipError",
    "VideoInfo",
    "check_frame_size",
    "decode_image",
    "decode_video",
    "encode_image",
    "encode_video",
    "frame_files",
    "image_grid",
    "read_frame_file",
    "read_frames",
    "read_image",
    "resize",
    "to_float",
    "to_uint8",
    "video_info",
    "write_gif",
    "write_mp4",
    "write_png",
]
