"""Inference: reenacting a source image by a driving clip (FOMM's relative motion) and the
video / image files that show it. `demo_outputs` (imported on its own: it reads the data set)
writes the demo's reenactment.mp4 / .png."""

from maskrenderer_jax.inference.reenact import (
    Reenactor,
    get_reenactor,
    movement_scale,
    reenact,
    relative_keypoints,
)
from maskrenderer_jax.inference.video import image_grid, read_frames, write_mp4, write_png

__all__ = [
    "Reenactor",
    "get_reenactor",
    "image_grid",
    "movement_scale",
    "read_frames",
    "reenact",
    "relative_keypoints",
    "write_mp4",
    "write_png",
]
