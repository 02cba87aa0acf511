"""3DMM coefficients online, for MaskRenderer checkpoints at inference: Deep3DFace's regressor
on each model-size frame, aligned by Deep3DFace's 5-landmark alignment from dlib's landmarks.

The regressor answers in the aligned 224 px frame's camera; the 3D branch renders in the model
frame (the crop, with morphable_model.camera_for_size). `to_crop_frame` re-expresses the
coefficients there: the alignment is a similarity of the image (scale k, shift), which under
Deep3DFace's perspective camera is, to first order (weak perspective about the face's
centre), the face moved to depth z0 / k and shifted so that its centre projects where the
alignment's inverse puts it. Frames without landmarks fall back to the plain resize the
training step's online regressor uses (recon_net.preprocess_fomm_crop); they are counted.
"""

import logging

import jax
import jax.numpy as jnp
import numpy as np

from maskrenderer_jax import params_io
from maskrenderer_jax.face3d import morphable_model as mm
from maskrenderer_jax.face3d import recon_net
from maskrenderer_jax.nets import random_weights

_TRANS = slice(254, 257)
_DEPTH = 10.0  # Deep3DFace's camera sits at z = 10


def load_recon_variables(directory: str | None) -> dict:
    """converters.deep3dface's output, or random weights with a loud warning."""
    if directory:
        return params_io.load_variables(directory)
    random_weights.warn_random_weights(
        "Deep3DFace ReconNet",
        "converters.deep3dface",
        "the regressed 3DMM coefficients, and so the 3D branch's motion, are meaningless; "
        "pass --recon-variables DIR.",
    )
    return recon_net.ReconNet().init(
        jax.random.key(0), jnp.zeros((1, 32, 32, 3), jnp.float32), train=False
    )


def _similarity(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray]:
    """Least-squares dst ~ k * src + b (uniform scale, no rotation): (k, b [2])."""
    sc, dc = src - src.mean(0), dst - dst.mean(0)
    k = float((sc * dc).sum() / (sc * sc).sum())
    return k, dst.mean(0) - k * src.mean(0)


def to_crop_frame(coeffs: np.ndarray, k: float, b: np.ndarray) -> np.ndarray:
    """[257] coefficients of the aligned 224 frame -> the frame p' = k p + b (pixels, y down,
    224 px) by moving the face's translation (weak perspective about its centre)."""
    focal, centre = mm.FOCAL, mm.CENTER
    out = np.array(coeffs, np.float64)
    tx, ty, tz = out[_TRANS]
    z0 = _DEPTH - tz
    u, v_up = focal * tx / z0 + centre, focal * ty / z0 + centre
    x, y = k * u + b[0], k * (mm.IMAGE_SIZE - v_up) + b[1]  # y down
    z1 = z0 / k
    out[_TRANS] = [(x - centre) * z1 / focal, (mm.IMAGE_SIZE - y - centre) * z1 / focal,
                   _DEPTH - z1]  # fmt: skip
    return out.astype(np.float32)


class OnlineCoefficients:
    """images [B, S, S, 3] -> [B, 257] coefficients in the model frame, as the 3D branch
    wants them; `fallbacks` counts frames that had no landmarks."""

    def __init__(self, recon_variables: dict, faces):
        self.variables, self.faces, self.fallbacks = recon_variables, faces, 0
        net = recon_net.ReconNet()
        self._net = jax.jit(lambda v, x: net.apply(v, x, train=False))
        self._plain = jax.jit(
            lambda v, x: net.apply(v, recon_net.preprocess_fomm_crop(x), train=False)
        )

    def __call__(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images, np.float32)
        size = images.shape[1]
        landmarks, found = self.faces.landmarks68(images)
        out = np.zeros((len(images), mm.NUM_COEFFS), np.float32)
        for i in np.flatnonzero(found):
            aligned = recon_net.align_five_landmarks(images[i], landmarks[i])
            coeffs = np.asarray(self._net(self.variables, aligned.image[None]))[0]
            # crop pixels -> aligned pixels, fitted on the landmarks the alignment moved
            k, b = _similarity(landmarks[i].astype(np.float64), aligned.landmarks)
            scale = recon_net.INPUT_SIZE / size  # the crop as a 224 image
            out[i] = to_crop_frame(coeffs, scale / k, -b * scale / k)
        missing = np.flatnonzero(~found)
        if len(missing):
            self.fallbacks += len(missing)
            out[missing] = np.asarray(self._plain(self.variables, images[missing]))
            logging.info("no landmarks in %d frame(s): plain-resize coefficients", len(missing))
        return out
