"""A portable reenactor: the per-frame step of animation, parameters baked in, as a file that
runs without this repository.

    python -m converters.portable (--workdir RUN [--step N] | --variables DIR --config C)
        --out reenactor.jax [--format stablehlo|onnx] [--batch N|symbolic] [--bfm bfm.npz]
        [--verify] [--overwrite]

One function, images in, frames out (`Reenactor.frames`): the source's keypoints and encoder
features and the reference frame's keypoints are computed inside, once per call, so a caller
needs nothing but arrays. Inputs, in this order (float32, images in [0, 1], H = W = the model's
image size, B driving frames: `--batch N`, or any B with `symbolic`):

  source [H, W, 3], driving [B, H, W, 3], driving_initial [H, W, 3] (relative mode's reference,
  the first driving frame; pass the source for absolute motion), and for MaskRenderer models
  source_coeffs [257], driving_coeffs [B, 257], initial_coeffs [257] (3DMM coefficients,
  Deep3DFace layout; the 3DMM is baked in). Output: prediction [B, H, W, 3].

--format stablehlo (default): `jax.export` serialised (StableHLO + calling convention), lowered
for CPU, CUDA and TPU, matmuls and convolutions at full float32 precision. Load it with jax
alone: `jax.export.deserialize(open(path, 'rb').read()).call(*inputs)`.

--format onnx (jax2onnx, run by onnxruntime): the 3D branch's rasterizer does not convert
(docs/DESIGN_NOTES.md, "A portable reenactor"), so a MaskRenderer model's ONNX graph takes the
branch's outputs instead of the coefficients: motion_3d [B, H, W, 2], coverage_3d [B, H, W],
rendered_3d [B, H, W, 3] (`face3d.branch.branch_inputs`).

--verify loads the written file back (jax.export / onnxruntime), runs it on random inputs and
prints the largest difference from the in-repo Reenactor.
"""

import argparse
import logging
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from maskrenderer_jax import cli_errors, output_files
from maskrenderer_jax.cli_errors import UserError
from maskrenderer_jax.face3d import morphable_model as mm
from maskrenderer_jax.face3d.branch import branch_inputs
from maskrenderer_jax.inference.reenact import Reenactor
from maskrenderer_jax.models import maskrenderer as mr

FORMATS = ("stablehlo", "onnx")
PLATFORMS = ("cpu", "cuda", "tpu")
IMAGE_INPUTS = ("source", "driving", "driving_initial")
COEFF_INPUTS = ("source_coeffs", "driving_coeffs", "initial_coeffs")
BRANCH_INPUTS = ("motion_3d", "coverage_3d", "rendered_3d")


class Signature(NamedTuple):
    """The exported function's inputs: names and shapes, in order ('b' for the batch)."""

    names: tuple[str, ...]
    shapes: tuple[tuple, ...]


def signature(image_size: int, *, uses_3d: bool, branch_outputs: bool, batch) -> Signature:
    """Inputs of the portable function. `batch`: an int or a symbolic dimension;
    `branch_outputs`: a 3D-branch model takes the branch's outputs, not coefficients."""
    image = (image_size, image_size, 3)
    names, shapes = IMAGE_INPUTS, (image, (batch, *image), image)
    if uses_3d and branch_outputs:
        size = (batch, image_size, image_size)
        names, shapes = names + BRANCH_INPUTS, shapes + ((*size, 2), size, (*size, 3))
    elif uses_3d:
        coeffs = (mm.NUM_COEFFS,)
        names, shapes = names + COEFF_INPUTS, shapes + (coeffs, (batch, *coeffs), coeffs)
    return Signature(names, shapes)


def frame_function(
    model_config, variables: dict, face_model: mm.MorphableModel | None, *, branch_outputs: bool
):
    """The portable function (inputs as `signature`'s), parameters closed over as constants.

    It maps the one-frame program over the driving batch (jax.vmap): the 3D branch's
    rasterizer sizes its loops from its static batch, which a symbolic batch would not give;
    mapped, the source's and reference frame's work stays unbatched (done once per call).
    """
    reenactor = Reenactor(model_config)
    uses_3d = reenactor.uses_3d

    def one_frame(source, frame, driving_initial, *extra):
        batched = [x[None] for x in extra]
        kwargs = {}
        if uses_3d and branch_outputs:
            kwargs["inputs_3d"] = dict(zip(BRANCH_INPUTS, batched, strict=True))
        elif uses_3d:
            source_coeffs, initial_coeffs = extra[0], extra[2]
            kwargs = dict(face_model=face_model, source_coeffs=source_coeffs,
                          driving_coeffs=batched[1], initial_coeffs=initial_coeffs)  # fmt: skip
        return reenactor.frames(variables, source, driving_initial, frame[None], **kwargs)[0]

    # Per input, as `signature` orders them: mapped over the batch (0) or shared (None).
    in_axes = (None, 0, None)
    if uses_3d:
        in_axes += (0, 0, 0) if branch_outputs else (None, 0, None)
    return jax.vmap(one_frame, in_axes=in_axes)


def _specs(sig: Signature) -> list[jax.ShapeDtypeStruct]:
    return [jax.ShapeDtypeStruct(shape, jnp.float32) for shape in sig.shapes]


def export_stablehlo(fn, sig: Signature) -> bytes:
    """`jax.export` of `fn` for every platform in PLATFORMS, serialised. Full float32
    precision: the loader's accelerator would otherwise be free to use TF32 / bf16 passes."""
    with jax.default_matmul_precision("highest"):
        exported = jax.export.export(jax.jit(fn), platforms=PLATFORMS)(*_specs(sig))
    return exported.serialize()


def export_onnx(fn, sig: Signature):
    """An onnx.ModelProto of `fn` (jax2onnx), inputs named as `sig`, output 'prediction'.

    jax2onnx gets the jaxpr of `fn`, traced here, so that only its per-primitive converters
    see it: its own tracing patches stand-ins over flax.linen functions, and these fail on our
    modules (its avg_pool takes window_shape by keyword only; none has a vmap rule)."""
    for noisy in ("jax2onnx", "onnx_ir"):  # optional plugins' imports, untyped constants
        logging.getLogger(noisy).setLevel(logging.ERROR)
    from jax.extend.core import jaxpr_as_fun
    from jax2onnx import to_onnx

    specs = _specs(sig)
    with jax.default_matmul_precision("highest"):
        closed = jax.make_jaxpr(fn)(*specs)
    return to_onnx(jaxpr_as_fun(closed), specs, model_name="reenactor",
                   input_names=list(sig.names), output_names=["prediction"])  # fmt: skip


def load_stablehlo(path) -> jax.export.Exported:
    """The jax.export artefact at `path`; UserError naming it if missing or unreadable."""
    data = _read(path)
    try:
        return jax.export.deserialize(bytearray(data))
    except Exception as e:  # flatbuffers raise anything on a corrupt buffer
        raise UserError(f"{path}: not a jax.export artefact ({type(e).__name__}: {e})") from e


def onnx_session(path):
    """An onnxruntime session of the ONNX file at `path`; UserError naming it if missing or
    unreadable."""
    import onnxruntime

    data = _read(path)
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: not its notes on unused constants
    try:
        return onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime's own exception types
        raise UserError(f"{path}: not an ONNX model onnxruntime loads ({e})") from e


def _read(path) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    return path.read_bytes()


def random_inputs(image_size: int, batch: int, face_model=None, seed: int = 0) -> dict:
    """Inputs for `batch` frames by name: random images and, with a 3DMM, the coefficients of
    a synthetic-heads clip of one identity and the 3D branch's outputs from them."""
    from data_pipeline import synthetic_heads

    rng = np.random.default_rng(seed)
    image = (image_size, image_size, 3)
    inputs = {name: rng.uniform(size=(batch, *image) if name == "driving" else image)
              .astype(np.float32) for name in IMAGE_INPUTS}  # fmt: skip
    if face_model is None:
        return inputs
    clip = synthetic_heads.clip_coefficients(
        synthetic_heads.identity_coefficients(rng), rng, batch + 2
    ).astype(np.float32)
    inputs |= {"source_coeffs": clip[0], "initial_coeffs": clip[1], "driving_coeffs": clip[2:]}
    shared = (batch, mm.NUM_COEFFS)
    branch = branch_inputs(face_model, np.broadcast_to(clip[0], shared), clip[2:], image_size,
                           driving_initial_coeffs=np.broadcast_to(clip[1], shared))  # fmt: skip
    return inputs | {k: np.asarray(branch[k]) for k in BRANCH_INPUTS}


def reference_frames(model_config, variables, face_model, inputs: dict) -> np.ndarray:
    """The in-repo Reenactor's frames for `random_inputs`: `source` animated by
    `driving_initial` (the reference frame) followed by `driving`, that first frame dropped."""
    frames = np.concatenate([inputs["driving_initial"][None], inputs["driving"]])
    reenactor = Reenactor(model_config, chunk_size=len(frames))
    coeffs = {}
    if reenactor.uses_3d:
        driving = np.concatenate([inputs["initial_coeffs"][None], inputs["driving_coeffs"]])
        coeffs = dict(face_model=face_model, source_coeffs=inputs["source_coeffs"],
                      driving_coeffs=driving)  # fmt: skip
    return reenactor(variables, inputs["source"], frames, **coeffs)[1:]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m converters.portable",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--workdir", help="a training run (its config.json and checkpoints)")
    source.add_argument("--variables", help="a directory of converted variables (with --config)")
    p.add_argument("--config", help="config file[:arg] (default: the workdir's config.json)")
    p.add_argument("--step", type=int, help="the workdir's checkpoint step (default: latest)")
    p.add_argument("--bfm", help="converters.bfm output (MaskRenderer; default: the run's 3DMM)")
    p.add_argument("--out", required=True, help="the artefact to write")
    p.add_argument("--format", choices=FORMATS, default="stablehlo")
    p.add_argument("--batch", default="symbolic", help="driving frames per call: N or symbolic")
    p.add_argument(
        "--verify",
        action="store_true",
        help="reload the artefact, run it, compare with the in-repo Reenactor",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    return p


def _batch(text: str):
    if text == "symbolic":
        return jax.export.symbolic_shape("b")[0]
    if not text.isdigit() or int(text) < 1:
        raise UserError(f"--batch must be a positive integer or 'symbolic', got {text!r}")
    return int(text)


def main(argv=None) -> dict:
    args = parser().parse_args(argv)
    from maskrenderer_jax.animate import load_face_model
    from maskrenderer_jax.inference.model_files import load_model

    batch = _batch(args.batch)
    model_path = args.workdir or args.variables
    read = Path(model_path) / "checkpoints" if args.workdir else Path(model_path)
    output_files.check_outputs({"--out": args.out}, [read, args.bfm], overwrite=args.overwrite)
    model = load_model(argparse.Namespace(checkpoint=model_path, config=args.config,
                                          step=args.step, precision="float32"))  # fmt: skip
    config = model.config
    uses_3d = mr.build_model(config.model).uses_3d
    face_model = load_face_model(args, config) if uses_3d else None
    onnx = args.format == "onnx"
    sig = signature(config.model.image_size, uses_3d=uses_3d, branch_outputs=onnx, batch=batch)
    fn = frame_function(config.model, model.variables, face_model, branch_outputs=onnx)
    with output_files.replacing(args.out) as tmp:
        if onnx:
            import onnx as onnx_lib

            onnx_lib.save(export_onnx(fn, sig), tmp)
        else:
            tmp.write_bytes(export_stablehlo(fn, sig))
    inputs = ", ".join(f"{n} [{', '.join(map(str, s))}]" for n, s in zip(*sig, strict=True))
    print(f"wrote {args.out} ({Path(args.out).stat().st_size / 2**20:.1f} MiB, {args.format}) "
          f"from {model.described}: ({inputs}) -> prediction")  # fmt: skip
    if onnx and uses_3d:
        print("the 3D branch's rasterizer does not convert to ONNX: the graph takes its outputs "
              "(face3d.branch.branch_inputs) instead of 3DMM coefficients")  # fmt: skip
    summary = {"out": args.out, "format": args.format, "inputs": list(sig.names)}
    if args.verify:
        size = config.model.image_size
        inputs = random_inputs(size, batch if isinstance(batch, int) else 2, face_model)
        if onnx:
            got = onnx_session(args.out).run(None, {n: inputs[n] for n in sig.names})[0]
        else:
            got = np.asarray(load_stablehlo(args.out).call(*[inputs[n] for n in sig.names]))
        want = reference_frames(config.model, model.variables, face_model, inputs)
        summary["max_abs_difference"] = float(np.abs(got - want).max())
        print(f"verified: max |artefact - Reenactor| = {summary['max_abs_difference']:.2e}")
    return summary


if __name__ == "__main__":
    cli_errors.run(main)
