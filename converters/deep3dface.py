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

import jax
import jax.numpy as jnp
import numpy as np

from converters import cli, safe_load, torch_layout
from maskrenderer_jax import cli_errors
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
    # Below 32 px layer4 (stride 32) has less than one cell: surely not a face crop.
    return cli.read_images(path, min_size=32, hint=" (224x224 for the published weights)")[0]


def main(argv=None) -> None:
    parser = cli.network_parser(
        "python -m converters.deep3dface",
        __doc__,
        source=("--checkpoint", "Deep3DFace checkpoint (epoch_20.pth) to import"),
        export_help="write {'net_recon': state_dict} (torch) to this file",
        probe_help="npz with images [B, H, W, 3] RGB in [0, 1]",
        probe_out_help="npz the probe writes coeffs [B, 257] to",
    )
    args = cli.parse(parser, argv)
    variables = cli.load_or_import(
        args, "checkpoint", lambda path: import_checkpoint(safe_load.load_torch(path), path)
    )
    cli.write_outputs(
        args,
        variables,
        "ReconNet",
        export=export_checkpoint,
        probe=lambda v, path: probe(v, read_probe_inputs(path)),
    )


if __name__ == "__main__":
    cli_errors.run(main)
