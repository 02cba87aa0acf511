"""python -m maskrenderer_jax.animate --source photo.jpg --driving clip.mp4 --checkpoint CKPT
    [--config C] --out result.mp4 [--relative | --absolute] [--adapt-scale] [--find-best-frame]
    [--crop | --no-crop] [--paste-back] [--side-by-side] [--batch-size N]
    [--precision float32|bfloat16] [--recon-variables DIR] [--bfm bfm.npz]

Animates a photo by a driving clip (FOMM's demo.py; LivePortrait's crop and paste-back).

CKPT: a training workdir (its config.json; the latest checkpoint or --step N), a directory of
converted variables (converters.fomm --out; needs --config) or a FOMM .pth.tar (converted in
memory; needs --config). Driving: a video PyAV opens, a folder of images (name order) or an
.npz of frames. Source: any image Pillow opens. Output by extension: .mp4 (H.264 at the
driving clip's fps with its audio track), .gif, .npz (`frames` [T, H, W, 3] float32 in [0, 1],
the model's frames unrounded) or, without a suffix, a folder of PNGs.

--crop (default) finds the face with dlib (--detector hog|cnn|haar) in the photo and through
the clip, and animates FOMM-style square crops, smoothed over time; --no-crop resizes the
inputs to the model as they are. MaskRenderer checkpoints regress 3DMM coefficients online
(Deep3DFace, --recon-variables; random weights with a warning otherwise) on the 3DMM of the
run (--bfm overrides it).
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from maskrenderer_jax import cli_errors, media, output_files
from maskrenderer_jax.inference import clip_files, face_crop
from maskrenderer_jax.inference.model_files import load_model
from maskrenderer_jax.inference.reenact import get_reenactor


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m maskrenderer_jax.animate",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--source", required=True, help="the photo to animate")
    p.add_argument("--driving", required=True, help="video, folder of images, or .npz")
    p.add_argument("--checkpoint", required=True, help="workdir, variables dir or .pth.tar")
    p.add_argument("--config", help="config file[:arg] (default: the workdir's config.json)")
    p.add_argument("--step", type=int, help="the workdir's checkpoint step (default: latest)")
    p.add_argument("--out", required=True, help=".mp4, .gif, .npz, or a folder for PNGs")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--relative",
        dest="relative",
        action="store_true",
        default=True,
        help="FOMM's relative motion from the first driving frame (default)",
    )
    mode.add_argument("--absolute", dest="relative", action="store_false",
                      help="the driver's own keypoints / 3DMM pose")  # fmt: skip
    p.add_argument("--adapt-scale", action="store_true", help="FOMM's adapt_movement_scale")
    p.add_argument("--find-best-frame", action="store_true",
                   help="start from the driving frame whose face is most like the source's "
                   "(FOMM's), animating forward and backward from it")  # fmt: skip
    crop = p.add_mutually_exclusive_group()
    crop.add_argument(
        "--crop",
        dest="crop",
        action="store_true",
        default=True,
        help="detect the face and animate square crops of it (default)",
    )
    crop.add_argument("--no-crop", dest="crop", action="store_false",
                      help="take the inputs as they are, resized to the model")  # fmt: skip
    p.add_argument("--detector", choices=("hog", "cnn", "haar"), default="hog")
    p.add_argument(
        "--paste-back",
        action="store_true",
        help="blend the animated face into the photo (which keeps its size)",
    )
    p.add_argument("--side-by-side", action="store_true", help="source | driving | result")
    p.add_argument("--batch-size", type=int, default=8, help="driving frames per model call")
    p.add_argument("--precision", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--fps", type=float, help="frame rate of a folder / .npz driving clip (25)")
    p.add_argument("--recon-variables", help="converters.deep3dface output (MaskRenderer)")
    p.add_argument("--bfm", help="converters.bfm output (default: the run's 3DMM)")
    p.add_argument("--coefficients", help=".npz of known 3DMM coefficients (`source` [257], "
                   "`driving` [T, 257]) instead of regressing them (MaskRenderer)")  # fmt: skip
    return p


class Progress:
    """'frames n/T  x.x frames/s' on stderr, redrawn in place; a summary line at the end."""

    def __init__(self, total: int):
        self.total, self.done, self.start = total, 0, time.perf_counter()

    @property
    def rate(self) -> float:
        return self.done / max(time.perf_counter() - self.start, 1e-9)

    def update(self, n: int) -> None:
        self.done += n
        bar = "#" * (20 * self.done // self.total)
        print(f"\r[{bar:<20}] {self.done}/{self.total} frames  {self.rate:.1f} frames/s",
              end="", file=sys.stderr, flush=True)  # fmt: skip
        if self.done >= self.total:
            print(file=sys.stderr)


def check_paths(args) -> str:
    for flag in ("source", "driving"):
        if not Path(getattr(args, flag)).exists():
            raise cli_errors.UserError(f"--{flag} {getattr(args, flag)}: no such file or folder")
    out = Path(args.out)
    if not out.absolute().parent.is_dir():
        raise cli_errors.UserError(
            f"--out {out}: the folder {out.absolute().parent} does not exist"
        )
    kind = clip_files.output_kind(out)
    # A training workdir is read only under checkpoints/ (and config.json): writing the
    # result beside them, into the run's folder, overwrites nothing.
    checkpoint = Path(args.checkpoint)
    read = checkpoint / "checkpoints" if (checkpoint / "checkpoints").is_dir() else checkpoint
    output_files.check_outputs({"--out": out}, [args.source, args.driving, read],
                               overwrite=args.overwrite)  # fmt: skip
    if args.batch_size < 1:
        raise cli_errors.UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.paste_back and not args.crop:
        raise cli_errors.UserError("--paste-back needs --crop (it pastes the face's crop back)")
    return kind


def side_by_side(panels: list[np.ndarray]) -> np.ndarray:
    """[T, H_i, W_i, 3] float panels -> [T, H, sum W, 3], each resized to the last's height."""
    height = panels[-1].shape[1]
    resized = []
    for panel in panels:
        h, w = panel.shape[1:3]
        width = max(1, round(w * height / h))
        if (h, w) == (height, width):
            resized.append(panel)
        else:
            resized.append(
                np.stack([media.to_float(media.resize(f, height, width)) for f in panel])
            )
    return np.concatenate(resized, axis=2)


def animate(args) -> dict:
    kind = check_paths(args)
    config, variables, described, _ = load_model(args)
    size = int(config.model.image_size)
    photo = clip_files.read_source(args.source)
    driving = clip_files.read_driving(args.driving, args.fps)
    frames_uint8 = media.to_uint8(driving.frames)

    faces = None
    needs_faces = args.crop or args.find_best_frame
    reenactor = get_reenactor(config.model, args.batch_size)
    if needs_faces or (reenactor.uses_3d and not args.coefficients):
        from maskrenderer_jax.evaluation.dlib_faces import DlibFaces

        faces = DlibFaces(args.detector)
    lost, square = 0, None
    if args.crop:
        boxes, found = face_crop.detect_boxes(faces, photo[None])
        if not found[0]:
            raise cli_errors.UserError(
                f"--source {args.source}: no face found (try --detector cnn, or --no-crop)"
            )
        square = face_crop.square_of_box(boxes[0])
        source = media.to_float(face_crop.crop(photo, square, size))
        try:
            track = face_crop.track(faces, frames_uint8)
        except ValueError as e:
            raise cli_errors.UserError(f"--driving {args.driving}: {e} (try --no-crop)") from e
        lost = track.lost
        pairs = zip(frames_uint8, track.squares, strict=True)
        crops = [face_crop.crop(frame, square, size) for frame, square in pairs]
        driving_frames = media.to_float(np.stack(crops))
    else:
        source = media.to_float(media.resize(photo, size, size))
        driving_frames = driving.frames
        if driving_frames.shape[1:3] != (size, size):
            driving_frames = np.stack([media.to_float(media.resize(f, size, size))
                                       for f in frames_uint8])  # fmt: skip

    face_model = source_coeffs = driving_coeffs = None
    if reenactor.uses_3d:
        face_model = load_face_model(args, config)
    if reenactor.uses_3d and args.coefficients:
        source_coeffs, driving_coeffs = read_coefficients(args.coefficients, len(driving_frames))
    elif reenactor.uses_3d:
        from maskrenderer_jax.inference import coefficients

        regress = coefficients.OnlineCoefficients(
            coefficients.load_recon_variables(
                args.recon_variables or config.get("face3d", {}).get("recon_variables")
            ),
            faces,
        )
        source_coeffs = regress(source[None])[0]
        driving_coeffs = np.concatenate([regress(driving_frames[i : i + 16])
                                         for i in range(0, len(driving_frames), 16)])  # fmt: skip

    order = np.arange(len(driving_frames))
    start = face_crop.best_frame(faces, source, driving_frames) if args.find_best_frame else 0
    # FOMM's demo: animate forward from the best frame and backward from it, then join.
    pieces = [order[start:]] if start == 0 else [order[: start + 1][::-1], order[start:]]
    progress = Progress(len(driving_frames) + (len(pieces) - 1))
    outputs = []
    for piece in pieces:
        reenactor.start(variables, source, face_model=face_model, source_coeffs=source_coeffs,
                        relative=args.relative, adapt_movement_scale=args.adapt_scale)  # fmt: skip
        done = []
        for i in range(0, len(piece), args.batch_size):
            idx = piece[i : i + args.batch_size]
            coeffs = None if driving_coeffs is None else driving_coeffs[idx]
            done.append(reenactor.steps(driving_frames[idx], coeffs))
            progress.update(len(idx))
        outputs.append(np.concatenate(done))
    result = outputs[0] if len(outputs) == 1 else np.concatenate([outputs[0][::-1], outputs[1][1:]])

    shown_source, shown_driving = source, driving_frames
    if args.paste_back:
        result = np.stack([media.to_float(face_crop.paste_back(photo, frame, square))
                           for frame in result])  # fmt: skip
        shown_source, shown_driving = media.to_float(photo), driving.frames
    if args.side_by_side:
        sources = np.broadcast_to(shown_source, (len(result),) + shown_source.shape)
        result = side_by_side([sources, shown_driving, result])

    audio = driving.audio_from if kind == ".mp4" else None
    with output_files.replacing(args.out) as tmp:
        clip_files.write_result(tmp, kind, result, driving.fps, audio)
    summary = {
        "frames": len(result),
        "frames_per_second": progress.rate,
        "out": str(Path(args.out)),
        "lost_face_frames": lost,
        "model": described,
    }
    lost_text = ""
    if args.crop:
        lost_text = (f"; face lost in {lost} of {len(driving_frames)} driving frames (the last "
                     "crop kept)" if lost else "; face found in every driving frame")  # fmt: skip
    print(f"animated {len(result)} frames at {progress.rate:.1f} frames/s with {described} -> "
          f"{args.out}{' (with audio)' if audio else ''}{lost_text}")  # fmt: skip
    return summary


def read_coefficients(path: str, num_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """--coefficients: (source [257], driving [T, 257]) float32."""
    with np.load(path) as data:
        found = {k: data[k].shape for k in data.files}
        if found.get("source") != (257,) or found.get("driving") != (num_frames, 257):
            raise cli_errors.UserError(
                f"--coefficients {path}: need source [257] and driving [{num_frames}, 257] "
                f"(one row per driving frame); found {found}"
            )
        return data["source"].astype(np.float32), data["driving"].astype(np.float32)


def load_face_model(args, config):
    from maskrenderer_jax.face3d import bfm_files
    from maskrenderer_jax.train.frozen import morphable_model

    if args.bfm:
        return bfm_files.load_npz(args.bfm)
    return morphable_model(config)


def main(argv=None) -> dict:
    args = parser().parse_args(argv)
    return animate(args)


if __name__ == "__main__":
    cli_errors.run(main)
