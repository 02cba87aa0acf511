"""Deep3DFace checkpoints (sicxu/Deep3DFaceRecon_pytorch `epoch_20.pth`) <-> ReconNet variables.

The checkpoint is a dict {'net_recon': state_dict, 'optimizer': ..., ...}; only `net_recon` is
read (`backbone.*` = torchvision ResNet-50 without fc, `final_layers.{0..6}.*`).

Import:  python -m converters.deep3dface --checkpoint epoch_20.pth --out DIR
Export:  python -m converters.deep3dface --variables DIR --export net_recon.pth
Probe:   python -m converters.deep3dface --checkpoint epoch_20.pth --probe images.npz \
             --probe-out coeffs.npz

DIR holds {'params', 'batch_stats'} for `ReconNet().apply` (maskrenderer_jax.params_io). The
probe reads `images` [B, H, W, 3] float32 RGB in [0, 1] (224x224 aligned faces for the
published weights) and writes `coeffs` [B, 257].
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from converters import safe_load, torch_layout
from maskrenderer_jax import params_io
from maskrenderer_jax.face3d.recon_net import INPUT_SIZE, ReconNet

KEY = "net_recon"


def abstract_variables() -> dict:
    """Shapes of ReconNet's {'params', 'batch_stats'} (nothing is computed)."""
    x = jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32)
    return jax.eval_shape(lambda x: ReconNet().init(jax.random.key(0), x, train=False), x)


def import_checkpoint(checkpoint: object, source: str = "checkpoint") -> dict:
    """A loaded Deep3DFace checkpoint dict -> ReconNet variables (numpy float32).

    Raises ConversionError naming the keys found if it is not a Deep3DFace checkpoint, or
    listing every missing, unexpected and mismatched key of `net_recon`.
    """
    if not isinstance(checkpoint, dict) or KEY not in checkpoint:
        found = sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise torch_layout.ConversionError(
            f"{source}: not a Deep3DFace checkpoint: expected a dict with key {KEY!r} (the "
            f"ReconNetWrapper state dict); found {found}"
        )
    state = safe_load.to_numpy(checkpoint[KEY], f"{source}[{KEY!r}]")
    return torch_layout.from_torch(state, abstract_variables(), source=f"{source}[{KEY!r}]")


def export_checkpoint(variables: dict) -> dict[str, dict[str, np.ndarray]]:
    """ReconNet variables -> {'net_recon': torch-layout state dict (numpy)}."""
    return {KEY: torch_layout.to_torch(variables)}


@jax.jit  # module level: one compile per input shape for every probe in the process
def _coeffs(variables: dict, images: jax.Array) -> jax.Array:
    return ReconNet().apply(variables, images, train=False)


def probe(variables: dict, images: np.ndarray) -> dict[str, np.ndarray]:
    """Runs ReconNet (inference BatchNorm) on images [B, H, W, 3] in [0, 1] ->
    {'coeffs': [B, 257] float32}."""
    return {"coeffs": np.asarray(_coeffs(variables, images), np.float32)}


def read_probe_inputs(path: str) -> np.ndarray:
    with np.load(path, allow_pickle=False) as data:
        if "images" not in data:
            raise ValueError(f"{path}: missing array 'images'; found {sorted(data.files)}")
        images = np.asarray(data["images"], np.float32)
    # Below 32 px layer4 (stride 32) has less than one cell: surely not a face crop.
    if images.ndim != 4 or images.shape[-1] != 3 or min(images.shape[1:3]) < 32:
        raise ValueError(
            f"{path}: images must be [B, H, W, 3] float32 RGB in [0, 1] (224x224 for the "
            f"published weights, at least 32x32); got {images.shape}"
        )
    return images


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m converters.deep3dface",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="Deep3DFace checkpoint (epoch_20.pth) to import")
    source.add_argument("--variables", help="directory of converted Flax variables")
    parser.add_argument("--out", help="write the imported Flax variables to this directory")
    parser.add_argument("--export", help="write {'net_recon': state_dict} (torch) to this file")
    parser.add_argument("--probe", help="npz with images [B, H, W, 3] RGB in [0, 1]")
    parser.add_argument("--probe-out", help="npz the probe writes coeffs [B, 257] to")
    args = parser.parse_args(argv)
    if args.probe and not args.probe_out:
        parser.error("--probe needs --probe-out")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.checkpoint:
        variables = import_checkpoint(safe_load.load_torch(args.checkpoint), args.checkpoint)
    else:
        variables = params_io.load_variables(args.variables)
    if args.out:
        print(f"wrote ReconNet variables to {params_io.save_variables(args.out, variables)}")
    if args.export:
        import torch

        state = export_checkpoint(variables)
        tensors = {KEY: {k: torch.from_numpy(np.array(v)) for k, v in state[KEY].items()}}
        torch.save(tensors, args.export)
        print(f"wrote {{'{KEY}': state_dict}} ({len(state[KEY])} tensors) to {args.export}")
    if args.probe:
        result = probe(variables, read_probe_inputs(args.probe))
        np.savez(args.probe_out, **result)
        print(f"wrote coeffs {result['coeffs'].shape} to {args.probe_out}")


if __name__ == "__main__":
    main()
