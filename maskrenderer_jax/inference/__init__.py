"""Inference: reenacting a source image by a driving clip (FOMM's relative motion, batched or
streamed frame by frame) and the animate command's pieces (face crop, paste-back).

`from maskrenderer_jax.inference import reenact` is the module (`reenact.reenact`,
`reenact.Reenactor`); `demo_outputs` (imported on its own: it reads the data set) writes the
demo's reenactment.mp4 / .png. Media files are maskrenderer_jax.media's."""

from maskrenderer_jax.inference import reenact
from maskrenderer_jax.inference.reenact import (
    Reenactor,
    get_reenactor,
    movement_scale,
    relative_keypoints,
)

__all__ = ["Reenactor", "get_reenactor", "movement_scale", "reenact", "relative_keypoints"]
