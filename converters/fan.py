"""face-alignment 2DFAN4 state dict <-> nets/fan.py `FAN` variables.

The checkpoint is a plain PyTorch state dict of face-alignment's `FAN(4)` (`conv1.weight`,
`bn1.*`, `conv2.bn1.*`, `conv2.downsample.0.*`, `conv2.downsample.2.weight`,
`m0.b1_4.conv1.weight`, `top_m_0.*`, `conv_last0.*`, `bn_end0.*`, `l0.*`, `bl0.*`, `al0.*`,
...), e.g. the released `2DFAN4-11f355bf06.pth.tar` that face-alignment < 1.3 downloaded, or
one nested under 'state_dict' (training checkpoints). Every key must fit: anything missing,
extra or of another shape/dtype is one ConversionError listing all of them.

face-alignment >= 1.3 distributes TorchScript archives (`2DFAN4-cd938726ad.zip`, run with
torch.jit.load) instead; they are refused here, because loading one runs its serialized code.
Where you trust the file, turn it into a state dict first:
    python -c "import torch; torch.save(torch.jit.load('2DFAN4-cd938726ad.zip').state_dict(),
               '2DFAN4.pth')"

Import:  python -m converters.fan --checkpoint 2DFAN4-11f355bf06.pth.tar --out DIR
Export:  python -m converters.fan --variables DIR --export 2DFAN4.pth
Probe:   python -m converters.fan --variables DIR --probe images.npz --probe-out out.npz

DIR holds {'params', 'batch_stats'} for `FAN(num_modules).apply` (maskrenderer_jax.params_io).
The export is the full state dict (BatchNorm `num_batches_tracked` = 0 added), loadable into
face-alignment's FAN with strict=True. The probe reads `images` [B, 256, 256, 3] float32 RGB in
[0, 1] (face crops, as `nets.fan.crop_for_fan` makes them) and writes `heatmaps`
[B, 64, 64, 68] and `landmarks` [B, 68, 2] (x, y) in crop pixels (nets.fan's convention).
"""

import zipfile

import jax
import jax.numpy as jnp
import numpy as np

from converters import cli, safe_load, torch_layout
from maskrenderer_jax import cli_errors
from maskrenderer_jax.nets import fan
from maskrenderer_jax.nets.fan import FAN


def abstract_variables(num_modules: int = 4) -> dict:
    """Shapes of FAN's {'params', 'batch_stats'} (nothing is computed)."""
    x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    model = FAN(num_modules=num_modules)
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)


def import_state_dict(
    checkpoint: object, source: str = "checkpoint", *, num_modules: int = 4
) -> dict:
    """face-alignment FAN state dict (tensors or arrays; optionally under 'state_dict') ->
    FAN(num_modules) variables (numpy float32).

    Raises ConversionError listing every missing, unexpected and mismatched key.
    """
    state_dict = checkpoint
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        state_dict = checkpoint["state_dict"]
    if not isinstance(state_dict, dict):
        raise torch_layout.ConversionError(
            f"{source}: not a face-alignment FAN state dict (a dict of tensors); found "
            f"{type(state_dict).__name__}"
        )
    state = safe_load.to_numpy(state_dict, source)
    return torch_layout.from_torch(state, abstract_variables(num_modules), source=source)


def load_checkpoint(path: str, *, num_modules: int = 4) -> dict:
    """Reads a .pth / .pth.tar state dict safely and imports it; TorchScript is refused."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            scripted = any("/code/" in f"/{n}" for n in archive.namelist())
        if scripted:
            raise torch_layout.ConversionError(
                f"{path}: a TorchScript archive (face-alignment >= 1.3); loading it would run "
                "its code. Where you trust it: torch.save(torch.jit.load(path).state_dict(), "
                "'2DFAN4.pth'), then convert that."
            )
    return import_state_dict(safe_load.load_torch(path), path, num_modules=num_modules)


def export_state_dict(variables: dict) -> dict[str, np.ndarray]:
    """FAN variables -> face-alignment FAN state dict (numpy), num_batches_tracked added."""
    return torch_layout.to_torch(variables)


def probe(variables: dict, images: np.ndarray) -> dict[str, np.ndarray]:
    """FAN on images [B, 256, 256, 3] in [0, 1] -> {'heatmaps', 'landmarks'} (float32)."""
    heatmaps, landmarks = fan.heatmaps_and_landmarks(variables, jnp.asarray(images))
    return {
        "heatmaps": np.asarray(heatmaps, np.float32),
        "landmarks": np.asarray(landmarks, np.float32),
    }


def read_probe_inputs(path: str) -> np.ndarray:
    size = fan.INPUT_SIZE
    (images,) = cli.read_images(path, hint=f" ({size}x{size} face crops)")
    if images.shape[1:3] != (size, size):
        raise ValueError(
            f"{path}: images must be [B, {size}, {size}, 3] face crops (nets.fan.crop_for_fan); "
            f"got {images.shape}"
        )
    return images


def main(argv=None) -> None:
    parser = cli.network_parser(
        "python -m converters.fan",
        __doc__,
        source=("--checkpoint", "face-alignment FAN state dict (.pth / .pth.tar) to import"),
        export_help="write the face-alignment FAN state dict to this file",
        probe_help="npz with images [B, 256, 256, 3] RGB in [0, 1] (face crops)",
        probe_out_help="npz the probe writes heatmaps and landmarks to",
    )
    parser.add_argument(
        "--num-modules",
        type=int,
        default=4,
        help="hourglass modules of the checkpoint's FAN (2DFAN4: 4; default %(default)s)",
    )
    args = cli.parse(parser, argv)
    variables = cli.load_or_import(
        args, "checkpoint", lambda path: load_checkpoint(path, num_modules=args.num_modules)
    )
    cli.write_outputs(
        args,
        variables,
        "FAN",
        export=export_state_dict,
        probe=lambda v, path: probe(v, read_probe_inputs(path)),
    )


if __name__ == "__main__":
    cli_errors.run(main)
