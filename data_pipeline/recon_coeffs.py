"""The 3DMM pass of a build: Deep3DFace's regressor (maskrenderer_jax.face3d.recon_net.ReconNet,
variables from converters/deep3dface.py) fills the [257] coefficients of every staged frame.

FOMM's 256 crops go through `recon_net.preprocess_fomm_crop` (a resize to 224, no landmark
alignment), so the coefficients describe the face in that frame; see recon_net's docstring for
the camera this implies. Clips that already have coefficients are skipped (resumable).
"""

import json
import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from data_pipeline import staging
from maskrenderer_jax import media, params_io
from maskrenderer_jax.face3d import recon_net


def coefficient_fn(variables: dict):
    """A jitted fn: [B, S, S, 3] uint8 frames -> [B, 257] float32 coefficients."""
    net = recon_net.ReconNet()

    @jax.jit
    def coeffs(variables, frames):
        images = recon_net.preprocess_fomm_crop(frames.astype(jnp.float32) / 255.0)
        return net.apply(variables, images, train=False)

    return lambda frames: np.asarray(coeffs(variables, frames))


def clip_coefficients(fn, frames: np.ndarray, batch_size: int) -> np.ndarray:
    """[T, S, S, 3] uint8 -> [T, 257], in fixed-size batches (the last one padded) so that
    every call reuses one compiled program."""
    out = []
    for start in range(0, len(frames), batch_size):
        chunk = frames[start : start + batch_size]
        pad = batch_size - len(chunk)
        padded = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)]) if pad else chunk
        out.append(fn(padded)[: len(chunk)])
    return np.concatenate(out).astype(np.float32)


def fill_staged_coeffs(paths: list[Path], variables_dir, batch_size: int = 16) -> int:
    """Adds coefficients to each staged clip that lacks them, or has them from other regressor
    variables (their fingerprint is the clip's coeffs_key); returns how many were filled."""
    key = json.dumps(staging.file_fingerprint(variables_dir), sort_keys=True)
    todo = []
    for p in paths:
        meta = staging.staged_meta(p)
        if not meta["has_coeffs"] or meta["coeffs_key"] not in (None, key):
            todo.append(p)
    if not todo:
        return 0
    fn = coefficient_fn(jax.device_put(params_io.load_variables(variables_dir)))
    for i, path in enumerate(todo):
        clip = staging.read_staged(path)
        frames = np.stack([media.decode_image(f) for f in clip.frames])
        clip.coeffs = clip_coefficients(fn, frames, batch_size)
        clip.coeffs_key = key
        staging.write_staged(path, clip)
        logging.info("coefficients %d/%d: %s", i + 1, len(todo), clip.clip)
    return len(todo)
