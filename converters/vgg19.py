"""torchvision VGG19 (`vgg19-dcbb9e9d.pth`) <-> nets/vgg19.py `Vgg19` variables.

The checkpoint is torchvision's plain state dict: `features.{0,2,...,34}.{weight,bias}` and
`classifier.{0,3,6}.{weight,bias}`. Vgg19 stops at relu5_1 (FOMM's perceptual loss), so the
convs after it (`features.30/32/34`) and the classifier are dropped: they are listed in
DROPPED_KEYS and may be present or absent; any other key that does not fit is an error.

Import:  python -m converters.vgg19 --checkpoint vgg19-dcbb9e9d.pth --out DIR
Export:  python -m converters.vgg19 --variables DIR --export vgg19_features.pth
Probe:   python -m converters.vgg19 --checkpoint vgg19-dcbb9e9d.pth --probe images.npz \
             --probe-out features.npz

DIR holds {'params'} for `Vgg19().apply` (maskrenderer_jax.params_io). The export holds the
kept keys only (`features.0` .. `features.28`; load into torchvision's vgg19 with
strict=False). The probe reads `images` [B, H, W, 3] float32 RGB in [0, 1] and writes
relu1_1 .. relu5_1 as [B, h, w, C] float32 arrays.
"""

import jax
import jax.numpy as jnp
import numpy as np

from converters import cli, safe_load, torch_layout
from maskrenderer_jax import cli_errors
from maskrenderer_jax.nets.vgg19 import LAYERS, Vgg19

# Present in torchvision's checkpoint, unused by a network cut after relu5_1.
DROPPED_MODULES = (
    "features.30",  # conv5_2 .. conv5_4
    "features.32",
    "features.34",
    "classifier.0",  # fc6, fc7, fc8 (1000 ImageNet classes)
    "classifier.3",
    "classifier.6",
)
DROPPED_KEYS = tuple(f"{m}.{leaf}" for m in DROPPED_MODULES for leaf in ("weight", "bias"))
MIN_SIZE = 16  # four 2x2 max pools before relu5_1


def abstract_variables() -> dict:
    """Shapes of Vgg19's {'params'} (nothing is computed)."""
    x = jax.ShapeDtypeStruct((1, MIN_SIZE, MIN_SIZE, 3), jnp.float32)
    return jax.eval_shape(lambda x: Vgg19().init(jax.random.key(0), x), x)


def import_state_dict(state_dict: object, source: str = "checkpoint") -> dict:
    """torchvision vgg19 state dict (tensors or arrays) -> Vgg19 variables (numpy float32).

    Raises ConversionError listing every missing, unexpected and mismatched key.
    """
    if not isinstance(state_dict, dict):
        raise torch_layout.ConversionError(
            f"{source}: not a torchvision vgg19 state dict (a dict of tensors); found "
            f"{type(state_dict).__name__}"
        )
    state = safe_load.to_numpy(state_dict, source)
    kept = {k: v for k, v in state.items() if k not in DROPPED_KEYS}
    return torch_layout.from_torch(kept, abstract_variables(), source=source)


def export_state_dict(variables: dict) -> dict[str, np.ndarray]:
    """Vgg19 variables -> torchvision-layout state dict (numpy) of features.0 .. features.28."""
    return torch_layout.to_torch(variables)


@jax.jit  # module level: one compile per input shape for every probe in the process
def _features(variables: dict, images: jax.Array) -> tuple[jax.Array, ...]:
    return Vgg19().apply(variables, images)


def probe(variables: dict, images: np.ndarray) -> dict[str, np.ndarray]:
    """Runs Vgg19 on images [B, H, W, 3] in [0, 1] -> {'relu1_1': ..., 'relu5_1': ...}."""
    outputs = _features(variables, images)
    return {name: np.asarray(x, np.float32) for name, x in zip(LAYERS, outputs, strict=True)}


def read_probe_inputs(path: str) -> np.ndarray:
    return cli.read_images(path, min_size=MIN_SIZE)[0]


def main(argv=None) -> None:
    parser = cli.network_parser(
        "python -m converters.vgg19",
        __doc__,
        source=("--checkpoint", "torchvision vgg19 state dict (.pth) to import"),
        export_help="write the torchvision-layout state dict to this file",
        probe_help="npz with images [B, H, W, 3] RGB in [0, 1]",
        probe_out_help="npz the probe writes relu1_1 .. relu5_1 to",
    )
    args = cli.parse(parser, argv)
    variables = cli.load_or_import(
        args, "checkpoint", lambda path: import_state_dict(safe_load.load_torch(path), path)
    )
    cli.write_outputs(
        args,
        variables,
        "Vgg19",
        export=export_state_dict,
        probe=lambda v, path: probe(v, read_probe_inputs(path)),
    )


if __name__ == "__main__":
    cli_errors.run(main)
