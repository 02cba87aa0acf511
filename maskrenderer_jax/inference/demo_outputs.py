"""python -m maskrenderer_jax.inference.demo_outputs --workdir DIR [--config C]

Writes the demo's reenactment of held-out identities (the data set's eval split) by the latest
checkpoint in DIR: DIR/reenactment.mp4 (per frame: source | driving | output) and
DIR/reenactment.png (rows: source, driving frames, outputs; ~8 columns over the clip). The
first block is cross-identity (a source of one test identity driven by a clip of another),
the second self-reenactment (the source's own clip drives it, so the output should match the
driving row). The model and data set are the run's own (DIR/config.json); --config
replaces that config (e.g. to read another data set), it must describe the same model.
"""

import argparse
import logging
from pathlib import Path

import ml_collections
import numpy as np

from data_pipeline import sources
from data_pipeline.frame_source import FrameSource
from maskrenderer_jax import cli_errors, media
from maskrenderer_jax.face3d import morphable_model as mm
from maskrenderer_jax.inference.reenact import get_reenactor

GRID_COLUMNS = 8


def _clip(split: FrameSource, clip: int, num_frames: int) -> dict:
    """Frames 0..num_frames-1 of a clip (fewer if it is shorter): {'images': [T, S, S, 3]
    float32 in [0, 1], 'coeffs': [T, 257] float32 or None}."""
    length = min(num_frames, int(split.index.lengths[clip]))
    records = split.get_many([split.record(clip, t) for t in range(length)])
    images = np.stack([r["image"] for r in records]).astype(np.float32) / 255.0
    coeffs = None
    if split.has_coeffs:
        coeffs = np.stack([r["coeffs"] for r in records]).astype(np.float32)
    return {"images": images, "coeffs": coeffs}


def pick_clips(split: FrameSource) -> dict[str, int]:
    """{'source': the first clip of the first test identity (its frame 0 is the source),
    'cross': the first clip of the second identity (cross-identity driver)}."""
    index = split.index
    if index.num_identities < 2:
        raise ValueError(
            f"cross-identity reenactment needs 2 identities in split {split.split!r}, it has "
            f"{index.num_identities}"
        )
    return {"source": int(index.clips_of[0][0]), "cross": int(index.clips_of[1][0])}


def export_inputs(config: ml_collections.ConfigDict, folder, num_frames: int = 32) -> dict:
    """The held-out cross-identity pair as files for `python -m maskrenderer_jax.animate`:
    folder/source.png (frame 0 of the first test identity's clip), folder/driving.mp4 (a clip
    of the second identity) and, when the data set has them, folder/coefficients.npz (`source`
    [257], `driving` [T, 257]: the exact 3DMM coefficients, for `animate --coefficients`)."""
    split = sources.open_split(config.data, config.data.eval_split)
    clips = pick_clips(split)
    own, cross = _clip(split, clips["source"], 1), _clip(split, clips["cross"], num_frames)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        "source": media.write_png(folder / "source.png", own["images"][0]),
        "driving": media.write_mp4(folder / "driving.mp4", cross["images"]),
    }
    if own["coeffs"] is not None:
        paths["coefficients"] = folder / "coefficients.npz"
        np.savez(paths["coefficients"], source=own["coeffs"][0], driving=cross["coeffs"])
    return paths


def write_reenactment(
    config: ml_collections.ConfigDict,
    variables: dict,
    workdir,
    *,
    face_model: mm.MorphableModel | None = None,
    num_frames: int = 32,
    self_reenactment: bool = True,
    chunk_size: int = 8,
    fps: int = 25,
) -> dict[str, Path]:
    """Reenacts held-out identities and writes the result as a video and an image grid.

    Args:
      config: a full config (model and data sections; data.eval_split is read, and
        synthetic_heads is built on first use).
      variables: the generator side's {'params', 'batch_stats'}.
      workdir: folder for reenactment.mp4 and reenactment.png (created).
      face_model: the 3DMM of the data set's coefficients; required if the model uses the 3D
        branch (`maskrenderer_jax.train.frozen.morphable_model(config)`).
      num_frames: driving frames, at most (a clip shorter than that gives all its frames).
      self_reenactment: also write the source driven by its own clip.
      chunk_size: frames per compiled call (the compiled program is cached per process).
      fps: of the video.
    Returns:
      {'mp4': path, 'png': path}. The mp4 has T frames of [B * S, 3 * S, 3] (B = 2 blocks with
      self_reenactment, else 1; columns source | driving | output); the png is
      [3 * B * S, min(8, T) * S, 3] uint8 (rows source, driving, output per block).
    """
    reenactor = get_reenactor(config.model, chunk_size)
    if reenactor.uses_3d and face_model is None:
        raise ValueError("this model uses the 3D branch: pass face_model (the data set's 3DMM)")
    split = sources.open_split(config.data, config.data.eval_split)
    if reenactor.uses_3d and not split.has_coeffs:
        raise ValueError(
            f"the 3D branch needs 3DMM coefficients, data set {split.name!r} has none "
            f"(build it with coefficients, see data_pipeline.recon_coeffs)"
        )
    size = int(config.model.image_size)
    if int(config.data.image_size) != size:
        raise ValueError(f"data.image_size {config.data.image_size} != model.image_size {size}")

    clips = pick_clips(split)
    own = _clip(split, clips["source"], num_frames)
    source = own["images"][0]
    source_coeffs = None if own["coeffs"] is None else own["coeffs"][0]
    drivers = {"cross": _clip(split, clips["cross"], num_frames)}
    if self_reenactment:
        drivers["self"] = own
    names = split.index.clips
    logging.info("source: frame 0 of %s; driver: %s", names[clips["source"]], names[clips["cross"]])
    length = min(len(d["images"]) for d in drivers.values())
    blocks = []
    for driver in drivers.values():
        driving = driver["images"][:length]
        output = reenactor(
            variables,
            source,
            driving,
            face_model=face_model if reenactor.uses_3d else None,
            source_coeffs=source_coeffs if reenactor.uses_3d else None,
            driving_coeffs=driver["coeffs"][:length] if reenactor.uses_3d else None,
        )
        blocks.append((np.broadcast_to(source, driving.shape), driving, output))

    workdir = Path(workdir)
    # Video: per frame, one row per block: source | driving | output.
    frames = np.concatenate([np.concatenate(b, axis=2) for b in blocks], axis=1)
    mp4 = media.write_mp4(workdir / "reenactment.mp4", frames, fps=fps)
    columns = np.unique(np.linspace(0, length - 1, min(GRID_COLUMNS, length)).round().astype(int))
    rows = []
    for src, driving, output in blocks:
        rows += [src[:1], driving[columns], output[columns]]
    png = media.write_png(workdir / "reenactment.png", media.image_grid(rows))
    return {"mp4": mp4, "png": png}


def main(argv=None) -> dict[str, Path]:
    from configs.common import load_config
    from maskrenderer_jax.models.maskrenderer import build_model
    from maskrenderer_jax.train.checkpoint import (
        IncompatibleConfigError,
        load_generator_variables,
        model_differences,
        read_run_config,
    )
    from maskrenderer_jax.train.frozen import morphable_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument(
        "--config", help="config file[:arg] instead of the run's config.json (same model)"
    )
    parser.add_argument("--workdir", required=True, help="training workdir (checkpoints)")
    parser.add_argument("--num_frames", type=int, default=32)
    parser.add_argument("--no_self", action="store_true", help="cross-identity only")
    parser.add_argument(
        "--export_inputs",
        metavar="DIR",
        help="also write the held-out source.png, driving.mp4 and their 3DMM coefficients.npz "
        "to DIR, for python -m maskrenderer_jax.animate",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)

    if args.config is None:
        config = read_run_config(args.workdir)
    else:
        config = load_config(args.config)
        run_config = Path(args.workdir) / "config.json"
        if run_config.is_file():
            differences = model_differences(read_run_config(args.workdir), config)
            if differences:
                raise IncompatibleConfigError(
                    f"--config {args.config} is not the model of {run_config}: "
                    + "; ".join(differences[:8])
                )
    variables = load_generator_variables(args.workdir, config)
    face_model = None
    if build_model(config.model).uses_3d:
        face_model = morphable_model(config)
    paths = write_reenactment(
        config,
        variables,
        args.workdir,
        face_model=face_model,
        num_frames=args.num_frames,
        self_reenactment=not args.no_self,
    )
    if args.export_inputs:
        paths.update(export_inputs(config, args.export_inputs, args.num_frames))
    for path in paths.values():
        print(path)
    return paths


if __name__ == "__main__":
    cli_errors.run(main)
