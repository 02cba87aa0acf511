"""Every network of a run -> one file of PyTorch-named tensors (safetensors or npz), and back.

Export: python -m converters.export --workdir RUN [--step N] --out model.safetensors \
            [--format npz] [--dtype bfloat16] [--check-torch]
        python -m converters.export --variables DIR --config C --out model.safetensors
Import: python -m converters.export --safetensors model.safetensors --out DIR [--config C]
        python -m converters.export --npz model.npz --out DIR

Tensors are named `<network>.<PyTorch state-dict key>` for kp_detector, generator and
discriminator (converters/torch_layout.py's mapping: FOMM's names for FOMM's parts), with
FOMM's anti-alias buffers and BatchNorm counters, so that the PyTorch networks of
converters/maskrenderer_torch load them with strict=True. Metadata: `config` (the model section
as JSON) and `networks` (the networks in the file). An import is exact (float32 as written;
bfloat16 widened); a file that does not fit its config is one error listing every mismatch.
"""

import argparse
from pathlib import Path

import jax
import ml_collections
import numpy as np

from converters import cli, fomm, torch_layout
from converters.export_format import (
    FORMATS,
    NETWORKS,
    export_config,
    read_export,
    write_export,
)
from maskrenderer_jax import cli_errors, output_files, params_io
from maskrenderer_jax.models import layers
from maskrenderer_jax.models import maskrenderer as mr

PARITY_ATOL = 1e-4


def export_tensors(networks: dict, model_config, dtype: str = "float32") -> dict[str, np.ndarray]:
    """{'model': variables, 'discriminator': variables|None} -> {'<network>.<key>': array};
    the variables in `dtype` ('float32' or 'bfloat16'). FOMM's fixed anti-alias kernels stay
    float32: they are the model's constants, checked on import, not trained values."""
    fixed = fomm.derived_buffers(model_config)
    out = {}
    for network, state in fomm.export_checkpoint(networks, model_config).items():
        for key, value in state.items():
            if value.dtype == np.float32 and key not in fixed.get(network, {}):
                value = value.astype(jax.numpy.dtype(dtype))
            out[f"{network}.{key}"] = value
    return out


def export_metadata(networks: dict, model_config) -> dict[str, str]:
    present = [n for n in NETWORKS if n in fomm.REQUIRED or networks.get(n) is not None]
    return {"config": model_config.to_json_best_effort(), "networks": ",".join(present)}


def import_tensors(
    tensors: dict[str, np.ndarray], metadata: dict[str, str], source: str, model_config=None
) -> tuple[dict, ml_collections.ConfigDict]:
    """An export's tensors -> ({'model': variables, 'discriminator': variables|None}, the model
    config). With `model_config`, the file's config must be that one. Raises ConversionError
    listing every config difference and every missing, unexpected or mismatched tensor."""
    from maskrenderer_jax.train.checkpoint import model_differences

    file_config = ml_collections.ConfigDict(export_config(metadata, source))
    problems = []
    if model_config is None:
        model_config = file_config
    else:
        wrap = lambda c: ml_collections.ConfigDict({"model": c.to_dict()})
        differences = model_differences(wrap(file_config), wrap(model_config))
        problems += [f"config {d.replace(' in the run,', ' in the file,')}" for d in differences]

    listed = set(metadata.get("networks", "").split(",")) | set(fomm.REQUIRED)
    nested = {name: {} for name in NETWORKS if name in listed}
    for key, value in tensors.items():
        network, _, name = key.partition(".")
        if network not in NETWORKS:
            problems.append(f"unexpected {key} (no network {network!r})")
            continue
        if value.dtype.name == "bfloat16":  # a --dtype bfloat16 export: widened exactly
            value = value.astype(np.float32)
        nested.setdefault(network, {})[name] = value
    try:
        networks = fomm.import_checkpoint(nested, model_config, source=source)
    except torch_layout.ConversionError as e:
        problems.append(str(e))
    if problems:
        raise torch_layout.ConversionError(
            f"{source} does not fit the model:\n" + "\n".join(f"  {p}" for p in problems)
        )
    return networks, model_config


def load_run(workdir: str, step: int | None) -> tuple[dict, ml_collections.ConfigDict, int]:
    """(networks, model config, step) of a training run's checkpoint (default: the latest)."""
    from maskrenderer_jax.train import checkpoint

    config = checkpoint.read_run_config(workdir)
    steps = checkpoint.saved_steps(workdir)
    if not steps:
        raise cli_errors.UserError(f"{checkpoint.checkpoint_dir(workdir)}: no checkpoint")
    step = steps[-1] if step is None else step
    if step not in steps:
        raise cli_errors.UserError(f"{workdir}: no checkpoint at step {step}; saved: {steps}")
    networks = jax.tree.map(np.asarray, checkpoint.load_network_variables(workdir, config, step))
    return networks, config.model, step


def probe_inputs(model_config, batch: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic inputs of the model's shapes (NHWC): smooth source and driving images and,
    for the 3D branch, a smooth M_3D near the identity, a face-like coverage and rendering."""
    size = model_config.image_size
    rng = np.random.default_rng(seed)
    grid = np.asarray(layers.coordinate_grid(size, size))

    def smooth(channels):
        centres = rng.uniform(-0.6, 0.6, (batch, 4, 1, 1, 2))
        blobs = np.exp(-np.sum((grid[None, None] - centres) ** 2, -1) / 0.1)  # [B, 4, H, W]
        return np.einsum("bkhw,bkc->bhwc", blobs, rng.uniform(0, 1, (batch, 4, channels)))

    images = {name: np.clip(smooth(3), 0, 1) for name in ("source", "driving")}
    if model_config.dense_motion.num_extra_motions:
        images["motion_3d"] = grid + 0.1 * np.tanh(smooth(2) - smooth(2))
        images["coverage_3d"] = np.clip(2 * smooth(1)[..., 0], 0, 1)
        images["rendered_3d"] = np.clip(smooth(3), 0, 1)
    return {k: v.astype(np.float32) for k, v in images.items()}


def torch_differences(path: str, inputs: dict[str, np.ndarray] | None = None) -> dict:
    """{output: max |JAX - PyTorch|} for the export at `path`: our forward (inference mode) on
    its imported variables against converters.maskrenderer_torch's on the file loaded with
    strict=True; keypoints, jacobians, masks, deformation, occlusion maps, prediction and the
    discriminator's maps. Needs torch.

    Each value is max |JAX - PyTorch| over max(1, max |PyTorch|): the absolute difference for
    outputs on a unit scale (images, masks, keypoints, motion), relative to the output's largest
    magnitude for the unbounded ones (jacobians, the discriminator's feature maps, which reach
    ~10 after training and so carry float32 rounding ~10x larger in absolute terms)."""
    import torch

    from converters import maskrenderer_torch

    tensors, metadata = read_export(path)
    networks, model_config = import_tensors(tensors, metadata, path)
    inputs = probe_inputs(model_config) if inputs is None else inputs
    with jax.default_matmul_precision("highest"):
        model = mr.build_model(model_config)
        forward = jax.jit(lambda v, x: model.apply(v, **x, train=False))
        ours = jax.tree.map(np.asarray, forward(networks["model"], inputs))
    exported = maskrenderer_torch.load(path)
    nchw = lambda x: torch.from_numpy(np.array(np.moveaxis(x, -1, 1)))  # a writable copy
    nhwc = lambda x: np.moveaxis(x.numpy(), 1, -1)
    tensor = lambda x: torch.from_numpy(np.array(x))
    layouts = {"source": nchw, "driving": nchw, "rendered_3d": nchw, "motion_3d": tensor,
               "coverage_3d": tensor}  # fmt: skip
    with torch.no_grad():
        theirs = exported.model(**{k: layouts[k](v) for k, v in inputs.items()})
    pairs = {
        "prediction": (ours["prediction"], nhwc(theirs["prediction"])),
        "deformation": (ours["deformation"], theirs["deformation"].numpy()),
        "mask": (ours["mask"], nhwc(theirs["mask"])),
        "deformed": (ours["deformed"], nhwc(theirs["deformed"])),
    }
    for side in ("kp_source", "kp_driving"):
        for key, value in ours[side].items():
            pairs[f"{side}.{key}"] = (value, theirs[side][key].numpy())
    for i, (a, b) in enumerate(zip(ours["occlusion_maps"], theirs["occlusion_maps"], strict=True)):
        pairs[f"occlusion_maps.{i}"] = (a, nhwc(b))
    if exported.discriminator is not None:
        pairs.update(_discriminator_pairs(networks, model_config, exported, ours, nchw, nhwc))
    return {
        k: float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(b)))))
        for k, (a, b) in pairs.items()
    }


def _discriminator_pairs(networks, model_config, exported, ours, nchw, nhwc) -> dict:
    """Both discriminators (inference mode) on our prediction, resized to each scale."""
    import torch

    disc = mr.build_discriminator(model_config)
    prediction = ours["prediction"]
    size = prediction.shape[1:3]
    pyramid = {
        f"prediction_{s}": np.asarray(
            layers.resize_bilinear(prediction, round(size[0] * s), round(size[1] * s))
        )
        for s in disc.scales
    }
    kp_value = ours["kp_driving"]["value"]
    with jax.default_matmul_precision("highest"):
        out = disc.apply(networks["discriminator"], pyramid, kp_value, train=False)
    with torch.no_grad():
        theirs = exported.discriminator(
            {k: nchw(v) for k, v in pyramid.items()},
            kp={"value": torch.from_numpy(np.array(kp_value))},
        )
    pairs = {}
    for key, value in out.items():
        if isinstance(value, list):  # feature maps, one per block
            for i, (a, b) in enumerate(zip(value, theirs[key], strict=True)):
                pairs[f"discriminator.{key}.{i}"] = (np.asarray(a), nhwc(b))
        else:
            pairs[f"discriminator.{key}"] = (np.asarray(value), nhwc(theirs[key]))
    return pairs


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m converters.export",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--workdir", help="a training run's workdir: export its checkpoint")
    source.add_argument("--variables", help="converted Flax variables (with --config): export")
    source.add_argument("--safetensors", help="an export to import back to variables (--out DIR)")
    source.add_argument("--npz", help="an npz export to import back to variables (--out DIR)")
    parser.add_argument("--out", required=True, help="the export file, or the variables DIR")
    parser.add_argument(
        "--config",
        help="model config file[:arg] of --variables; for an import: the file's must be it",
    )
    parser.add_argument("--step", type=int, help="the workdir's checkpoint (default: latest)")
    parser.add_argument("--format", choices=FORMATS, default="safetensors")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument(
        "--check-torch",
        action="store_true",
        help=f"load the export in converters.maskrenderer_torch and fail unless its forward "
        f"matches ours to {PARITY_ATOL} on a probe batch",
    )
    cli.add_overwrite(parser)
    args = parser.parse_args(argv)
    read = [args.variables, args.safetensors, args.npz, (args.config or "").partition(":")[0]]
    if args.workdir:  # a run is read only under checkpoints/ and config.json: beside is safe
        read += [Path(args.workdir) / "checkpoints", Path(args.workdir) / "config.json"]
    output_files.check_outputs({"--out": args.out}, read, overwrite=args.overwrite)
    if args.variables and not args.config:
        parser.error("--variables needs --config (the model config the variables are of)")
    if args.step is not None and not args.workdir:
        parser.error("--step selects a --workdir checkpoint")
    if args.workdir and args.config:
        parser.error("--workdir exports with the run's own config (config.json): drop --config")
    config = None
    if args.config:
        from configs.common import load_config

        config = load_config(args.config).model

    if args.safetensors or args.npz:
        path = args.safetensors or args.npz
        networks, _ = import_tensors(*read_export(path), path, config)
        saved = {k: v for k, v in networks.items() if v is not None}
        out = params_io.save_variables(args.out, saved, overwrite=args.overwrite)
        print(f"wrote the variables of {sorted(saved)} to {out}")
        return

    if args.workdir:
        networks, model_config, step = load_run(args.workdir, args.step)
        described = f"{args.workdir} step {step}"
    else:
        networks = params_io.load_variables(args.variables)
        if "params" in networks:  # the generator side alone (e.g. mr.init_variables)
            networks = {"model": networks}
        networks.setdefault("discriminator", None)
        model_config, described = config, f"variables {args.variables}"
    tensors = export_tensors(networks, model_config, args.dtype)
    write_export(args.out, tensors, export_metadata(networks, model_config), args.format)
    print(f"wrote {len(tensors)} tensors ({args.dtype}) of {described} to {args.out}")
    if args.check_torch:
        differences = torch_differences(args.out)
        worst = max(differences, key=differences.get)
        print(
            f"PyTorch vs JAX, max |difference| (relative where an output exceeds 1) over "
            f"{len(differences)} outputs: "
            f"{differences[worst]:.2e} ({worst})"
        )
        if differences[worst] > PARITY_ATOL:
            raise ValueError(
                f"{args.out}: the PyTorch networks differ from ours by more than "
                f"{PARITY_ATOL}: " + ", ".join(f"{k} {v:.2e}" for k, v in differences.items())
            )


if __name__ == "__main__":
    cli_errors.run(main)
