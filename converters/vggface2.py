"""VGGFace2 resnet50_ft (`resnet50_ft_weight.pkl`) <-> nets/vggface2.py `VGGFace2` variables.

The weights of cydonia999/VGGFace2-pytorch are a pickle (Python 2, read with latin1) of a dict
name -> numpy array, the names being the state-dict keys of its `resnet50(num_classes=8631)`
(`conv1.weight`, `bn1.running_mean`, `layer1.0.downsample.0.weight`, ..., `fc.weight`). It is
read through converters/safe_load.py's restricted unpickler: a pickle that names anything but
numpy arrays and plain containers is refused before any of it runs. The identity classifier
(`fc`, DROPPED_KEYS) is dropped; every other key must fit exactly.

Import:  python -m converters.vggface2 --pickle resnet50_ft_weight.pkl --out DIR
Export:  python -m converters.vggface2 --variables DIR --export resnet50_ft_trunk.pkl
Probe:   python -m converters.vggface2 --pickle resnet50_ft_weight.pkl --probe images.npz \
             --probe-out embeddings.npz

DIR holds {'params', 'batch_stats'} for `VGGFace2().apply` (maskrenderer_jax.params_io). The
export is a pickle in the same format without `fc` (the reference's `load_state_dict` loads it
into `resnet50(include_top=False)`). The probe reads `images` [B, H, W, 3] float32 RGB in
[0, 1] (FOMM 256x256 crops; see nets/vggface2.py for the preprocessing) and writes
`embeddings` [B, 2048] (L2-normalised) and `features` [B, 2048] (before normalisation).
"""

import jax
import jax.numpy as jnp
import numpy as np

from converters import cli, safe_load, torch_layout
from maskrenderer_jax import cli_errors
from maskrenderer_jax.nets.vggface2 import VGGFace2, l2_normalize, preprocess

# The 8631-identity classifier: not part of the embedding network.
DROPPED_KEYS = ("fc.weight", "fc.bias")
MIN_SIZE = 32  # layer4 has stride 32


def abstract_variables() -> dict:
    """Shapes of VGGFace2's {'params', 'batch_stats'} (nothing is computed)."""
    x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
    return jax.eval_shape(lambda x: VGGFace2().init(jax.random.key(0), x), x)


def import_weights(weights: object, source: str = "pickle") -> dict:
    """The unpickled dict name -> array -> VGGFace2 variables (numpy float32).

    Raises ConversionError listing every missing, unexpected and mismatched key.
    """
    if not isinstance(weights, dict):
        raise torch_layout.ConversionError(
            f"{source}: not a VGGFace2 weights pickle (a dict name -> numpy array); found "
            f"{type(weights).__name__}"
        )
    state = safe_load.to_numpy(weights, source)
    kept = {k: v for k, v in state.items() if k not in DROPPED_KEYS}
    return torch_layout.from_torch(kept, abstract_variables(), source=source)


def export_weights(variables: dict) -> dict[str, np.ndarray]:
    """VGGFace2 variables -> {state-dict key: float32 array} without `fc` or BN counters."""
    state = torch_layout.to_torch(variables)
    # The published pickle has no num_batches_tracked (it predates them); keep the format.
    return {k: v for k, v in state.items() if not k.endswith(torch_layout.IGNORED_SUFFIXES)}


@jax.jit  # module level: one compile per input shape for every probe in the process
def _embed(variables: dict, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    features = VGGFace2().apply(variables, preprocess(images))
    return l2_normalize(features), features


def probe(variables: dict, images: np.ndarray) -> dict[str, np.ndarray]:
    """Images [B, H, W, 3] RGB in [0, 1] -> {'embeddings': [B, 2048] unit norm,
    'features': [B, 2048] pooled, unnormalised}."""
    embeddings, features = _embed(variables, images)
    return {
        "embeddings": np.asarray(embeddings, np.float32),
        "features": np.asarray(features, np.float32),
    }


def read_probe_inputs(path: str) -> np.ndarray:
    return cli.read_images(path, min_size=MIN_SIZE, hint=" (256x256 FOMM crops)")[0]


def main(argv=None) -> None:
    parser = cli.network_parser(
        "python -m converters.vggface2",
        __doc__,
        source=("--pickle", "resnet50_ft_weight.pkl (name -> numpy array) to import"),
        export_help="write a pickle of numpy arrays (no fc) to this file",
        probe_help="npz with images [B, H, W, 3] RGB in [0, 1]",
        probe_out_help="npz the probe writes embeddings, features to",
    )
    args = cli.parse(parser, argv)
    variables = cli.load_or_import(
        args, "pickle", lambda path: import_weights(safe_load.load_pickle(path), path)
    )
    cli.write_outputs(
        args,
        variables,
        "VGGFace2",
        export=export_weights,
        save=cli.save_pickle,
        probe=lambda v, path: probe(v, read_probe_inputs(path)),
    )


if __name__ == "__main__":
    cli_errors.run(main)
