"""pytorch-fid's FID Inception (`pt_inception-2015-12-05-6726825d.pth`) <-> nets/inception.py
`InceptionV3` variables.

The checkpoint is the state dict of pytorch-fid's `fid_inception_v3()` (torchvision's
Inception3 with `aux_logits=False, num_classes=1008` and the FID blocks; pytorch-fid loads it
with strict `load_state_dict`): `Conv2d_{1a_3x3,2a_3x3,2b_3x3,3b_1x1,4a_3x3}` and
`Mixed_{5b..7c}.<branch>`, each `.conv.weight` and `.bn.{weight,bias,running_mean,running_var}`
(`.bn.num_batches_tracked` is ignored), plus the classifier `fc.{weight,bias}` [1008, 2048],
which pool3 does not use: it is listed in DROPPED_KEYS and may be present or absent; any other
key that does not fit is an error.

Import:  python -m converters.inception --checkpoint pt_inception-2015-12-05-6726825d.pth --out DIR
Export:  python -m converters.inception --variables DIR --export fid_inception_trunk.pth
Probe:   python -m converters.inception --variables DIR --probe images.npz --probe-out pool3.npz
         (or --checkpoint instead of --variables)

DIR holds {'params', 'batch_stats'} for `InceptionV3().apply` (maskrenderer_jax.params_io).
The export holds every key but fc (load into pytorch-fid's fid_inception_v3() with
strict=False). The probe reads `images` [B, H, W, 3] float32 RGB in [0, 1] of any size and
writes `pool3` [B, 2048] float32, pytorch-fid's `InceptionV3([3])` output.
"""

import jax
import jax.numpy as jnp
import numpy as np

from converters import cli, safe_load, torch_layout
from maskrenderer_jax import cli_errors
from maskrenderer_jax.nets import inception
from maskrenderer_jax.nets.inception import InceptionV3

# In the checkpoint, unused by pool3: the 1008-way classifier (TF's 1001 classes, padded).
DROPPED_KEYS = ("fc.weight", "fc.bias")


def abstract_variables() -> dict:
    """Shapes of InceptionV3's {'params', 'batch_stats'} (nothing is computed)."""
    x = jax.ShapeDtypeStruct((1, inception.MIN_SIZE, inception.MIN_SIZE, 3), jnp.float32)
    init = InceptionV3().init
    return jax.eval_shape(lambda x: init(jax.random.key(0), x, method=InceptionV3.trunk), x)


def import_state_dict(state_dict: object, source: str = "checkpoint") -> dict:
    """pytorch-fid FID Inception state dict (tensors or arrays) -> InceptionV3 variables
    (numpy float32).

    Raises ConversionError listing every missing, unexpected and mismatched key.
    """
    if not isinstance(state_dict, dict):
        raise torch_layout.ConversionError(
            f"{source}: not a pytorch-fid Inception state dict (a dict of tensors); found "
            f"{type(state_dict).__name__}"
        )
    state = safe_load.to_numpy(state_dict, source)
    kept = {k: v for k, v in state.items() if k not in DROPPED_KEYS}
    return torch_layout.from_torch(kept, abstract_variables(), source=source)


def export_state_dict(variables: dict) -> dict[str, np.ndarray]:
    """InceptionV3 variables -> pytorch-fid-layout state dict (numpy), fc excluded."""
    return torch_layout.to_torch(variables)


def probe(variables: dict, images: np.ndarray) -> dict[str, np.ndarray]:
    """Runs InceptionV3 on images [B, H, W, 3] in [0, 1] -> {'pool3': [B, 2048] float32}."""
    return {"pool3": np.asarray(inception.features(variables, images), np.float32)}


def read_probe_inputs(path: str) -> np.ndarray:
    return cli.read_images(path)[0]


def main(argv=None) -> None:
    parser = cli.network_parser(
        "python -m converters.inception",
        __doc__,
        source=("--checkpoint", "pytorch-fid pt_inception-2015-12-05-6726825d.pth to import"),
        export_help="write the pytorch-fid-layout state dict (without fc) to this file",
        probe_help="npz with images [B, H, W, 3] RGB in [0, 1], any size",
        probe_out_help="npz the probe writes pool3 [B, 2048] to",
    )
    args = cli.parse(parser, argv)
    variables = cli.load_or_import(
        args, "checkpoint", lambda path: import_state_dict(safe_load.load_torch(path), path)
    )
    cli.write_outputs(
        args,
        variables,
        "InceptionV3",
        export=export_state_dict,
        probe=lambda v, path: probe(v, read_probe_inputs(path)),
    )


if __name__ == "__main__":
    cli_errors.run(main)
