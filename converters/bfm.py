"""Deep3DFace's BFM_model_front.mat (or the synthetic model) -> this project's 3DMM .npz, and a
probe that runs `compute_for_render` on given coefficients for comparison with PyTorch.

Convert:  python -m converters.bfm --mat BFM/BFM_model_front.mat --out bfm.npz
Probe:    python -m converters.bfm --mat BFM_model_front.mat --probe coeffs.npz \
              --probe-out out.npz
Synthetic model instead of the licensed one (any mode):  --synthetic [--seed 0]
          python -m converters.bfm --synthetic --write-mat synthetic_bfm.mat

The probe reads `coeffs` [B, 257] float32 and writes `vertices` [B, N, 3] (camera space, after
rotation and translation), `colors` [B, N, 3] (lit, 0-1) and `landmarks` [B, 68, 2] (pixels,
v up, exactly as Deep3DFace's ParametricFaceModel.compute_for_render returns them).
"""

import argparse
from pathlib import Path

import jax
import numpy as np

from converters import safe_load
from maskrenderer_jax import cli_errors, output_files
from maskrenderer_jax.face3d import bfm_files, synthetic_bfm
from maskrenderer_jax.face3d import morphable_model as mm

PROBE_OUTPUTS = ("vertices", "colors", "landmarks")


def read_probe_coeffs(path: str | Path) -> np.ndarray:
    """`coeffs` [B, 257] float32 from an .npz (no pickles); errors name the file."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if "coeffs" not in data:
                raise ValueError(f"{path}: missing array 'coeffs'; found {sorted(data.files)}")
            coeffs = np.asarray(data["coeffs"], np.float32)
    except ValueError:
        raise
    except Exception as e:
        raise safe_load.UntrustedFileError(
            f"{path}: cannot read as an .npz: {type(e).__name__}: {e}"
        ) from e
    if coeffs.ndim != 2 or coeffs.shape[1] != mm.NUM_COEFFS:
        raise ValueError(f"{path}: coeffs must be [B, {mm.NUM_COEFFS}]; got {list(coeffs.shape)}")
    return coeffs


def probe(model: mm.MorphableModel, coeffs: np.ndarray, image_size: int = 224) -> dict:
    """{name: float32 numpy} of `reconstruct` for PROBE_OUTPUTS; non-finite coefficients raise
    ValueError naming the coefficient groups (checked here, before the jitted code)."""
    mm.check_coefficients(coeffs)
    run = jax.jit(mm.reconstruct, static_argnames="image_size")
    with jax.default_matmul_precision("highest"):
        out = run(model, coeffs, image_size=image_size)
    return {k: np.asarray(out[k], np.float32) for k in PROBE_OUTPUTS}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m converters.bfm",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--mat", help="Deep3DFace BFM_model_front.mat")
    source.add_argument("--npz", help="a model converted by this tool")
    source.add_argument("--synthetic", action="store_true", help="the generated face model")
    parser.add_argument("--seed", type=int, default=0, help="seed of --synthetic")
    parser.add_argument("--out", help="write the converted model (.npz) here")
    parser.add_argument("--write-mat", help="write the model as a .mat in the real schema here")
    parser.add_argument("--probe", help="npz with coeffs [B, 257]")
    parser.add_argument("--probe-out", help="npz the probe writes its outputs to")
    parser.add_argument(
        "--image-size",
        type=int,
        default=mm.IMAGE_SIZE,
        help="probe render size (focal and centre scale from 224)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace outputs that exist (never an input)"
    )
    args = parser.parse_args(argv)
    if bool(args.probe) != bool(args.probe_out):
        parser.error("--probe and --probe-out go together")
    if not (args.out or args.write_mat or args.probe):
        parser.error("nothing to do: give --out, --write-mat or --probe/--probe-out")
    output_files.check_outputs(
        {"--out": args.out, "--write-mat": args.write_mat, "--probe-out": args.probe_out},
        [args.mat, args.npz, args.probe],
        overwrite=args.overwrite,
    )
    return args


def _write(path: str, write) -> Path:
    """write(tmp) beside `path`, then renamed over it (the checks above allowed it)."""
    with output_files.replacing(path) as tmp:
        write(tmp)
    return Path(path)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.mat:
        model = bfm_files.load_bfm_mat(args.mat)
    elif args.npz:
        model = bfm_files.load_npz(args.npz)
    else:
        model = synthetic_bfm.synthetic_bfm(args.seed)
    summary = f"{model.num_vertices} vertices, {model.num_triangles} triangles"
    if args.out:
        path = _write(args.out, lambda tmp: bfm_files.save_npz(model, tmp))
        print(f"wrote the 3DMM ({summary}) to {path}")
    if args.write_mat:
        path = _write(args.write_mat, lambda tmp: bfm_files.write_bfm_mat(model, tmp))
        print(f"wrote the 3DMM ({summary}) to {path}")
    if args.probe:
        result = probe(model, read_probe_coeffs(args.probe), args.image_size)

        def savez(tmp):
            with open(tmp, "wb") as f:
                np.savez(f, **result)

        _write(args.probe_out, savez)
        shapes = ", ".join(f"{k} {list(v.shape)}" for k, v in result.items())
        print(f"wrote {shapes} to {args.probe_out}")


if __name__ == "__main__":
    cli_errors.run(main)
