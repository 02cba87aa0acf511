"""synthetic_heads: talking heads rendered with the project's synthetic 3DMM, with their
ground-truth coefficients, as a stand-in for VoxCeleb in tests and the demo.

Identities (disjoint between train and test, like VoxCeleb's) draw a shape, a texture, a
lighting and a background; each clip draws a smooth head-pose trajectory (yaw, pitch, roll and
translation as sums of slow sinusoids), jaw opening, blinks and a little other expression.
Frames are `mask * face + (1 - mask) * background` from maskrenderer_jax.face3d.render.
Everything is a deterministic function of the seed and the (identity, clip) numbers, so a
resumed build renders exactly what an uninterrupted one would.
"""

import concurrent.futures
import functools
import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from data_pipeline import naming, staging
from maskrenderer_jax import media
from maskrenderer_jax.face3d import morphable_model as mm
from maskrenderer_jax.face3d import render, synthetic_bfm

SIZES = (64, 128, 256)
_SLICE = mm.COEFF_SLICES
_EXP = {name: i for i, name in enumerate(synthetic_bfm.EXP_BASES)}


def identity_name(index: int) -> str:
    return f"synth{index:04d}"


def identity_coefficients(rng: np.random.Generator) -> np.ndarray:
    """[257] with the identity's id, tex and gamma set (motion groups zero)."""
    c = np.zeros(mm.NUM_COEFFS, np.float32)
    c[_SLICE["id"]] = rng.normal(0.0, 0.8, 80)
    c[_SLICE["tex"]] = rng.normal(0.0, 0.8, 80)
    gamma = np.zeros((3, 9))  # on top of Deep3DFace's ambient 0.8
    gamma[:, 0] = rng.normal(0.0, 0.08) + rng.normal(0.0, 0.03, 3)  # brightness, tint
    gamma[:, 1:4] = rng.normal(0.0, 0.15, 3)  # a directional light, the same for r, g, b
    gamma[:, 4:] = rng.normal(0.0, 0.03, 5)
    c[_SLICE["gamma"]] = gamma.reshape(-1)  # Deep3DFace reshapes gamma to [3, 9]
    return c


def background(rng: np.random.Generator, size: int) -> np.ndarray:
    """[S, S, 3] float32 in [0, 1]: a gradient between two colours plus soft blobs."""
    y, x = np.mgrid[0 : 1 : size * 1j, 0 : 1 : size * 1j]
    angle = rng.uniform(0, 2 * np.pi)
    t = (np.cos(angle) * (x - 0.5) + np.sin(angle) * (y - 0.5)) + 0.5
    a, b = rng.uniform(0.1, 0.9, (2, 3))
    image = a + (b - a) * np.clip(t, 0, 1)[..., None]
    for _ in range(3):
        cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.1, 0.3)
        blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r**2))
        image = image + blob[..., None] * rng.uniform(-0.25, 0.25, 3)
    return np.clip(image, 0, 1).astype(np.float32)


def smooth_signal(rng: np.random.Generator, num_frames: int, amplitude: float) -> np.ndarray:
    """[T] a sum of 3 slow sinusoids (0.1-0.8 cycles per 16 frames), peak ~amplitude."""
    t = np.arange(num_frames) / 16.0
    freq, phase = rng.uniform(0.1, 0.8, 3), rng.uniform(0, 2 * np.pi, 3)
    weight = rng.uniform(0.3, 1.0, 3)
    signal = np.sum(weight[:, None] * np.sin(2 * np.pi * freq[:, None] * t + phase[:, None]), 0)
    return amplitude * signal / weight.sum()


def blinks(rng: np.random.Generator, num_frames: int) -> np.ndarray:
    """[T] in [0, 1]: short closures (~3 frames), about one per 12 frames."""
    out = np.zeros(num_frames)
    t = np.arange(num_frames)
    for start in np.nonzero(rng.uniform(size=num_frames) < 1 / 12)[0]:
        out = np.maximum(out, np.exp(-0.5 * ((t - start) / 0.8) ** 2))
    return out


def clip_coefficients(identity: np.ndarray, rng: np.random.Generator, num_frames: int):
    """[T, 257]: the identity's coefficients with a per-frame pose and expression."""
    c = np.repeat(identity[None], num_frames, axis=0)
    angle = _SLICE["angle"].start
    for k, amplitude in enumerate((0.15, 0.35, 0.1)):  # pitch (x), yaw (y), roll (z), radians
        c[:, angle + k] = smooth_signal(rng, num_frames, amplitude)
    trans = _SLICE["trans"].start
    for k, amplitude in enumerate((0.08, 0.08, 0.4)):  # decimetres; z: nearer/farther
        c[:, trans + k] = smooth_signal(rng, num_frames, amplitude)
    exp = _SLICE["exp"].start
    # jaw open 1 opens the mouth about a lip height; eyes closed ~1.3 shuts the lids.
    c[:, exp + _EXP["jaw open"]] = np.clip(0.4 + smooth_signal(rng, num_frames, 1.0), 0, 1.5)
    c[:, exp + _EXP["eyes closed"]] = 1.3 * blinks(rng, num_frames)
    for name in ("smile", "brows raised", "mouth wide", "frown"):
        c[:, exp + _EXP[name]] = smooth_signal(rng, num_frames, 0.5)
    return c.astype(np.float32)


@functools.partial(jax.jit, static_argnames="image_size")
def composite_frames(model, coeffs, background_image, image_size: int):
    """[T, 257] coefficients over a [S, S, 3] background -> [T, S, S, 3] uint8."""
    out = render.render(model, coeffs, image_size, antialias=True)
    mask = out["mask"][..., None]
    image = mask * jnp.clip(out["image"], 0, 1) + (1 - mask) * background_image
    return jnp.round(jnp.clip(image, 0, 1) * 255).astype(jnp.uint8)


def clip_name(identity: int, clip: int, num_frames: int) -> str:
    return naming.fomm_clip_name(identity_name(identity), f"clip{clip:02d}", 0, num_frames)


def stage_synthetic(
    staging_dir: Path,
    config: ml_collections.ConfigDict,
    *,
    image_format: str = "png",
    report=None,
) -> dict[str, list[Path]]:
    """Renders every clip not yet staged (or staged with other options: the clip is restaged
    and `report` told why); returns the staged files of each split."""
    options = {"image_size": config.image_size, "image_format": image_format,
               "frames_per_clip": config.frames_per_clip}  # fmt: skip
    if config.image_size not in SIZES:
        raise ValueError(f"synthetic_heads image_size must be one of {SIZES}")
    if config.frames_per_clip < 2:
        raise ValueError("synthetic_heads needs at least 2 frames per clip")
    model = synthetic_bfm.synthetic_bfm(config.seed)
    splits = {"train": range(config.train_identities)}
    splits["test"] = range(
        config.train_identities, config.train_identities + config.test_identities
    )
    staged = {}
    with concurrent.futures.ThreadPoolExecutor(2) as encoders:  # PIL releases the GIL
        for split, identities in splits.items():
            staged[split] = []
            for i in identities:
                rng = np.random.default_rng([config.seed, i])
                identity, bg = identity_coefficients(rng), background(rng, config.image_size)
                for c in range(config.clips_per_identity):
                    name = clip_name(i, c, config.frames_per_clip)
                    path = staging.staged_path(staging_dir, split, name)
                    staged[split].append(path)
                    key = {"source": {"synthetic": [config.seed, i, c]}, "options": options}
                    if path.exists():
                        old = staging.staged_meta(path)["key"]
                        if old == key:
                            continue
                        if report is not None:
                            report.restage(path, staging.key_change(old, key))
                    coeffs = clip_coefficients(
                        identity, np.random.default_rng([config.seed, i, c]), config.frames_per_clip
                    )
                    frames = np.asarray(composite_frames(model, coeffs, bg, config.image_size))
                    encoded = list(
                        encoders.map(lambda f: media.encode_image(f, image_format), frames)
                    )
                    clip = staging.StagedClip(
                        name, identity_name(i), encoded, coeffs, "synthetic", key
                    )
                    staging.write_staged(path, clip)
            logging.info("synthetic_heads %s: %d clips", split, len(staged[split]))
    return staged
