"""What every network converter's command line shares: the flags (a source, --variables, --out,
--export, --probe, --probe-out, --overwrite), the output checks (no output may be an input; an
existing one is replaced only with --overwrite, atomically), the probe's image reader and
writer, and torch file output."""

import argparse
import pickle

import numpy as np

from maskrenderer_jax import output_files, params_io

OUTPUT_FLAGS = ("out", "export", "probe_out")


def network_parser(
    prog: str,
    description: str,
    *,
    source: tuple[str, str],
    export_help: str,
    probe_help: str,
    probe_out_help: str,
) -> argparse.ArgumentParser:
    """A parser with the source flag (e.g. ('--checkpoint', help)) or --variables, and the
    actions --out, --export and --probe/--probe-out."""
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument(source[0], help=source[1])
    group.add_argument("--variables", help="directory of converted Flax variables")
    parser.add_argument("--out", help="write the imported Flax variables to this directory")
    parser.add_argument("--export", help=export_help)
    parser.add_argument("--probe", help=probe_help)
    parser.add_argument("--probe-out", help=probe_out_help)
    add_overwrite(parser)
    return parser


def add_overwrite(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--overwrite", action="store_true", help="replace outputs that exist (never an input)"
    )


def parse(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """Parses and checks the outputs against every other path flag (the inputs)."""
    args = parser.parse_args(argv)
    if args.probe and not args.probe_out:
        parser.error("--probe needs --probe-out")
    check_outputs(args)
    return args


def check_outputs(args: argparse.Namespace) -> None:
    """Every path-valued flag that is not an output counts as an input."""
    outputs = {f"--{k.replace('_', '-')}": getattr(args, k, None) for k in OUTPUT_FLAGS}
    inputs = [
        v for k, v in vars(args).items()
        if k not in OUTPUT_FLAGS and isinstance(v, str) and k not in ("net", "arch")
    ]  # fmt: skip
    output_files.check_outputs(outputs, inputs, overwrite=getattr(args, "overwrite", False))


def load_or_import(args: argparse.Namespace, source_attr: str, import_fn):
    """Imports from the source file when given, else reads --variables."""
    path = getattr(args, source_attr)
    return import_fn(path) if path else params_io.load_variables(args.variables)


def save_if_asked(args: argparse.Namespace, variables, what: str) -> None:
    if args.out:
        path = params_io.save_variables(args.out, variables, overwrite=args.overwrite)
        print(f"wrote {what} variables to {path}")


def write_outputs(
    args: argparse.Namespace,
    variables,
    what: str,
    *,
    export=None,
    probe=None,
    save=None,
) -> None:
    """What a network converter writes, as its flags ask: --out (the Flax variables),
    --export (`save(export(variables), path)`; `save` defaults to torch.save) and
    --probe/--probe-out (`probe(variables, probe_path)` -> arrays)."""
    save_if_asked(args, variables, what)
    if args.export:
        (save or save_torch)(export(variables), args.export)
        print(f"wrote the {what} export to {args.export}")
    if args.probe:
        write_probe(args.probe_out, probe(variables, args.probe))


def read_images(path: str, names=("images",), *, min_size: int = 1, hint: str = "") -> list:
    """[B, H, W, 3] float32 arrays `names` of an npz, each checked; errors name file and array."""
    with np.load(path, allow_pickle=False) as data:
        missing = [n for n in names if n not in data]
        if missing:
            quoted = ", ".join(f"'{n}'" for n in missing)
            raise ValueError(f"{path}: missing array {quoted}; found {sorted(data.files)}")
        arrays = [np.asarray(data[n], np.float32) for n in names]
    for name, x in zip(names, arrays, strict=True):
        if x.ndim != 4 or x.shape[-1] != 3 or min(x.shape[1:3]) < min_size:
            size = f", at least {min_size}x{min_size}" if min_size > 1 else ""
            raise ValueError(
                f"{path}: {name} must be [B, H, W, 3] float32 RGB in [0, 1]"
                f"{hint}{size}; got {x.shape}"
            )
    return arrays


def write_probe(path: str, result: dict[str, np.ndarray]) -> None:
    with output_files.replacing(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **result)  # a file object: numpy appends no '.npz'
    shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in result.items())
    print(f"wrote {shapes} to {path}")


def save_torch(state: dict, path: str) -> None:
    """Writes a (nested) dict of numpy arrays as torch tensors with torch.save."""
    import torch

    def tensors(tree):
        if isinstance(tree, dict):
            return {k: tensors(v) for k, v in tree.items()}
        return torch.from_numpy(np.array(tree))

    with output_files.replacing(path) as tmp:
        torch.save(tensors(state), tmp)


def save_pickle(state: dict, path: str) -> None:
    """A protocol-2 pickle of numpy arrays (readable by Python 2 originals), atomically."""
    with output_files.replacing(path) as tmp, open(tmp, "wb") as f:
        pickle.dump(state, f, protocol=2)
