"""Pieces shared by the config files."""

import importlib.util
from pathlib import Path

import ml_collections


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
    """'runlocal,batch=8' -> {'runlocal': True, 'batch': 8}, typed by the defaults."""
    out = ml_collections.ConfigDict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, _, value = item.partition("=")
        if key not in out:
            raise ValueError(f"unknown config arg {key!r}; known: {sorted(out)}")
        out[key] = True if not value else type(defaults[key])(value)
    return out


def fomm_model(num_kp: int = 10, image_size: int = 256) -> ml_collections.ConfigDict:
    """FOMM's vox-256 networks (config/vox-256.yaml model_params)."""
    return ml_collections.ConfigDict(
        dict(
            num_kp=num_kp,
            image_size=image_size,
            dtype="float32",
            kp_detector=dict(
                block_expansion=32,
                max_features=1024,
                num_blocks=5,
                temperature=0.1,
                estimate_jacobian=True,
                single_jacobian_map=False,
                scale_factor=0.25,
                pad=0,
                attention=False,
            ),
            dense_motion=dict(
                block_expansion=64,
                max_features=1024,
                num_blocks=5,
                scale_factor=0.25,
                kp_variance=0.01,
                estimate_occlusion_map=True,
                num_occlusion_masks=1,
                num_extra_motions=0,
                attention=False,
            ),
            generator=dict(
                block_expansion=64,
                max_features=512,
                num_down_blocks=2,
                num_bottleneck_blocks=6,
                skip_connections=False,
            ),
            discriminator=dict(
                scales=(1,),
                block_expansion=32,
                max_features=512,
                num_blocks=4,
                sn=True,
                use_kp=False,
                kp_variance=0.01,
            ),
        )
    )


def maskrenderer_model(model: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Turns a FOMM model section into MaskRenderer's: CBAM skips in the FFD and dense-motion
    hourglasses, the 3D motion as one extra motion (K+2 masks, eq. 4) with the rendered face
    as input, a multi-scale occlusion mask per generator level and skip-connected decoding."""
    model = ml_collections.ConfigDict(model.to_dict())
    model.kp_detector.attention = True
    model.dense_motion.attention = True
    model.dense_motion.num_extra_motions = 1
    model.generator.skip_connections = True
    model.dense_motion.num_occlusion_masks = model.generator.num_down_blocks + 1
    return model


def load_config(spec: str) -> ml_collections.ConfigDict:
    """'configs/tiny.py:fomm' -> that file's get_config('fomm') (as absl's config_flags)."""
    path, _, arg = spec.partition(":")
    if not Path(path).is_file():
        raise FileNotFoundError(f"config file {path} not found")
    spec_obj = importlib.util.spec_from_file_location(Path(path).stem, path)
    module = importlib.util.module_from_spec(spec_obj)
    spec_obj.loader.exec_module(module)
    return module.get_config(arg or None)
