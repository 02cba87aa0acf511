"""FOMM checkpoints (first-order-model `vox-cpk.pth.tar`) <-> this project's Flax variables.

Import:  python -m converters.fomm --checkpoint vox-cpk.pth.tar \
             --config configs/fomm_vox256.py --out DIR
Export:  python -m converters.fomm --variables DIR --config configs/fomm_vox256.py \
             --export fomm-layout.pth.tar
Probe:   python -m converters.fomm --checkpoint X --config C --probe inputs.npz \
             --probe-out out.npz
Step:    python -m converters.fomm --checkpoint X --config C --vgg19 VGG19_VARIABLES \
             --probe-step batch.npz --probe-out out.npz   (converters/fomm_step.py)
"""

import jax
import numpy as np

from configs import common
from converters import cli, fomm_step, safe_load, torch_layout
from maskrenderer_jax import cli_errors
from maskrenderer_jax.models import layers
from maskrenderer_jax.models import maskrenderer as mr

REQUIRED = ("kp_detector", "generator")  # inference needs only these; the D may be missing


def derived_buffers(model_config) -> dict[str, dict[str, np.ndarray]]:
    """The anti-alias kernels FOMM saves as buffers (`down.weight` [3, 1, k, k])."""

    def kernel(scale):
        k = layers.gaussian_kernel(scale)
        return np.tile(k[None, None], (3, 1, 1, 1))

    out = {"kp_detector": {}, "generator": {}}
    if model_config.kp_detector.scale_factor != 1:
        out["kp_detector"]["down.weight"] = kernel(model_config.kp_detector.scale_factor)
    if model_config.dense_motion.scale_factor != 1:
        out["generator"]["dense_motion_network.down.weight"] = kernel(
            model_config.dense_motion.scale_factor
        )
    return out


def _split(variables: dict, network: str) -> dict:
    return {col: tree[network] for col, tree in variables.items() if network in tree}


def abstract_variables(model_config) -> tuple[dict, dict]:
    """Shapes of the generator-side and discriminator variables for the config."""
    rng = jax.random.key(0)
    model = jax.eval_shape(lambda: mr.init_variables(model_config, rng))
    disc = jax.eval_shape(lambda: mr.init_discriminator_variables(model_config, rng))
    return model, disc


def import_checkpoint(checkpoint: object, model_config, source: str = "checkpoint") -> dict:
    """A loaded FOMM checkpoint dict -> {'model': variables, 'discriminator': variables|None}.

    Raises ConversionError listing every mismatch of every network at once.
    """
    if not isinstance(checkpoint, dict) or not all(k in checkpoint for k in REQUIRED):
        found = sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise torch_layout.ConversionError(
            f"{source}: not a FOMM checkpoint: expected a dict with keys {list(REQUIRED)} "
            f"(and optionally 'discriminator'); found {found}"
        )
    model_abstract, disc_abstract = abstract_variables(model_config)
    derived = derived_buffers(model_config)
    networks = {"model": {}, "discriminator": None}
    errors = []
    for name in (*REQUIRED, "discriminator"):
        if name not in checkpoint:
            continue
        abstract = disc_abstract if name == "discriminator" else _split(model_abstract, name)
        try:
            state = safe_load.to_numpy(checkpoint[name], f"{source}[{name}]")
            variables = torch_layout.from_torch(
                state, abstract, derived=derived.get(name), source=f"{source}[{name!r}]"
            )
        except (torch_layout.ConversionError, safe_load.UntrustedFileError) as e:
            errors.append(str(e))
            continue
        if name == "discriminator":
            networks["discriminator"] = variables
        else:
            for col, tree in variables.items():
                networks["model"].setdefault(col, {})[name] = tree
    if errors:
        raise torch_layout.ConversionError("\n".join(errors))
    return networks


def export_checkpoint(networks: dict, model_config) -> dict[str, dict[str, np.ndarray]]:
    """{'model': variables, 'discriminator': variables|None} -> FOMM-layout state dicts."""
    derived = derived_buffers(model_config)
    out = {
        name: torch_layout.to_torch(_split(networks["model"], name), derived=derived[name])
        for name in REQUIRED
    }
    if networks.get("discriminator") is not None:
        out["discriminator"] = torch_layout.to_torch(networks["discriminator"])
    return out


def probe(model_config, model_variables: dict, source: np.ndarray, driving: np.ndarray) -> dict:
    """Runs the converted model as FOMM's reconstruction does (absolute driving keypoints,
    inference BatchNorm) and returns every intermediate a user compares with PyTorch."""
    model = mr.build_model(model_config)

    @jax.jit
    def run(variables, source, driving):
        return model.apply(variables, source, driving, train=False)

    out = run(model_variables, source, driving)
    result = {
        "kp_source_value": out["kp_source"]["value"],
        "kp_driving_value": out["kp_driving"]["value"],
        "deformation": out["deformation"],
        "prediction": out["prediction"],
    }
    if "jacobian" in out["kp_source"]:
        result["kp_source_jacobian"] = out["kp_source"]["jacobian"]
        result["kp_driving_jacobian"] = out["kp_driving"]["jacobian"]
    if out["occlusion_maps"]:
        result["occlusion_map"] = out["occlusion_maps"][0]
    return {k: np.asarray(v, np.float32) for k, v in result.items()}


def read_probe_inputs(path: str) -> tuple[np.ndarray, np.ndarray]:
    source, driving = cli.read_images(path, ("source", "driving"))
    return source, driving


def main(argv=None) -> None:
    parser = cli.network_parser(
        "python -m converters.fomm",
        __doc__,
        source=("--checkpoint", "FOMM checkpoint (.pth.tar) to import"),
        export_help="write a FOMM-layout PyTorch checkpoint to this file",
        probe_help="npz with source, driving [B, H, W, 3] in [0, 1]",
        probe_out_help="npz the probe writes its outputs to",
    )
    parser.add_argument(
        "--config", required=True, help="model config file[:arg], e.g. configs/fomm_vox256.py"
    )
    parser.add_argument(
        "--probe-step",
        help="npz with source, driving [B, H, W, 3] in [0, 1], theta [B, 2, 3], control_params "
        "[B, 1, points_tps^2]: one training step's losses, gradients and BatchNorm statistics "
        "to --probe-out (converters/fomm_step.py)",
    )
    parser.add_argument("--vgg19", help="VGG19 variables (converters.vgg19 --out) for --probe-step")
    args = cli.parse(parser, argv)
    if args.probe_step and not (args.probe_out and args.vgg19):
        parser.error("--probe-step needs --probe-out and --vgg19")
    if args.probe_step and args.probe:
        parser.error("--probe and --probe-step both write --probe-out: give one")
    config = common.load_config(args.config)
    model_config = config.model
    if args.probe_step:  # the user's inputs are checked before the checkpoint is read
        step_batch = fomm_step.read_batch(args.probe_step, config)
        vgg19_variables = fomm_step.load_vgg19(args.vgg19)
    networks = cli.load_or_import(
        args,
        "checkpoint",
        lambda path: import_checkpoint(safe_load.load_torch(path), model_config, source=path),
    )
    networks.setdefault("discriminator", None)
    cli.save_if_asked(args, {k: v for k, v in networks.items() if v is not None}, "FOMM")
    if args.export:
        state = export_checkpoint(networks, model_config)
        cli.save_torch(state, args.export)
        print(f"wrote FOMM-layout state dicts {sorted(state)} to {args.export}")
    if args.probe:
        source, driving = read_probe_inputs(args.probe)
        cli.write_probe(args.probe_out, probe(model_config, networks["model"], source, driving))
    if args.probe_step:
        result = fomm_step.probe_step(config, networks, vgg19_variables, step_batch)
        cli.write_probe(args.probe_out, result)


if __name__ == "__main__":
    cli_errors.run(main)
