"""MaskRenderer: the facial feature detector (FFD) + dense motion + generator, wired.

Configured without extra motions it is FOMM; with `dense_motion.num_extra_motions = 1` it
takes the 3D branch's outputs: the motion field M_3D with its coverage and the rendered,
reenacted 3D face.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from maskrenderer_jax.models.discriminator import MultiScaleDiscriminator
from maskrenderer_jax.models.generator import OcclusionAwareGenerator
from maskrenderer_jax.models.keypoints import KPDetector, check_image

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


class MaskRenderer(nn.Module):
    """Keypoint detector and generator (which owns the dense motion network), as FOMM's."""

    kp_detector: KPDetector
    generator: OcclusionAwareGenerator

    @property
    def uses_3d(self) -> bool:
        return bool((self.generator.dense_motion or {}).get("num_extra_motions", 0))

    def detect(self, image: jax.Array, *, train: bool) -> dict:
        """image [B, H, W, 3] in [0, 1] -> {'value': [B, K, 2], 'jacobian': [B, K, 2, 2]}."""
        return self.kp_detector(image, train=train)

    def encode_source(self, source: jax.Array, *, train: bool) -> list[jax.Array]:
        """The generator's encoder features of `source` [B, H, W, 3] in [0, 1], finest first
        (level l: [B, H/2^l, W/2^l, C_l]): computed once per source at inference."""
        return self.generator.encode(source, train=train)

    def animate(
        self,
        source: jax.Array,
        kp_source: dict,
        kp_driving: dict,
        *,
        motion_3d: jax.Array | None = None,
        coverage_3d: jax.Array | None = None,
        rendered_3d: jax.Array | None = None,
        source_features: list[jax.Array] | None = None,
        train: bool,
    ) -> dict:
        """Renders `source` moved from `kp_source` to `kp_driving` (see __call__);
        `source_features`: `encode_source(source)` if already computed."""
        given = [x is not None for x in (motion_3d, rendered_3d)]
        if self.uses_3d and not all(given):
            raise ValueError(
                "this model is configured with the 3D branch: pass motion_3d "
                "[B, H, W, 2] and rendered_3d [B, H, W, 3] (coverage_3d optional)"
            )
        if not self.uses_3d and any(given):
            raise ValueError(
                "this model has no 3D inputs (dense_motion.num_extra_motions = 0); "
                "motion_3d / rendered_3d were given"
            )
        return self.generator(
            source,
            kp_driving,
            kp_source,
            extra_motions=None if motion_3d is None else motion_3d[:, None],
            extra_motion_weights=None if coverage_3d is None else coverage_3d[:, None],
            extra_inputs=rendered_3d,
            source_features=source_features,
            train=train,
        )

    def __call__(
        self,
        source: jax.Array,
        driving: jax.Array,
        *,
        motion_3d: jax.Array | None = None,
        coverage_3d: jax.Array | None = None,
        rendered_3d: jax.Array | None = None,
        train: bool,
    ) -> dict:
        """Reenacts `source` with the pose and expression of `driving`.

        Args:
          source, driving: [B, H, W, 3] float32 in [0, 1].
          motion_3d: [B, H, W, 2] M_3D: for each driving pixel, the source position of the same
            face surface point (grid convention, (x, y) in [-1, 1]).
          coverage_3d: [B, H, W] in [0, 1], where M_3D is valid (the rendered face's coverage).
          rendered_3d: [B, H, W, 3] in [0, 1], the reenacted 3D face.
        Returns:
          {'kp_source', 'kp_driving'} and the generator's outputs ('prediction' [B, H, W, 3],
          'deformation', 'mask', 'occlusion_maps', 'sparse_deformed', 'deformed',
          'warped_features').
        """
        check_image(source, "source")
        check_image(driving, "driving")
        kp_source = self.detect(source, train=train)
        kp_driving = self.detect(driving, train=train)
        out = self.animate(
            source,
            kp_source,
            kp_driving,
            motion_3d=motion_3d,
            coverage_3d=coverage_3d,
            rendered_3d=rendered_3d,
            train=train,
        )
        return {"kp_source": kp_source, "kp_driving": kp_driving, **out}


def _dtypes(model_config) -> dict[str, Any]:
    return {"dtype": DTYPES[model_config.dtype], "param_dtype": jnp.float32}


def build_model(model_config) -> MaskRenderer:
    """MaskRenderer from a config's `model` section (plain kwargs, nothing read from disk)."""
    kw = _dtypes(model_config)
    kp = KPDetector(num_kp=model_config.num_kp, **dict(model_config.kp_detector), **kw)
    generator = OcclusionAwareGenerator(
        num_kp=model_config.num_kp,
        dense_motion=dict(model_config.dense_motion),
        **dict(model_config.generator),
        **kw,
    )
    return MaskRenderer(kp_detector=kp, generator=generator)


def build_discriminator(model_config) -> MultiScaleDiscriminator:
    d = dict(model_config.discriminator)
    d["scales"] = tuple(d["scales"])
    return MultiScaleDiscriminator(num_kp=model_config.num_kp, **d, **_dtypes(model_config))


def example_inputs(model_config, batch_size: int = 1) -> dict[str, jax.Array]:
    """Zero inputs of the model's shapes (for init and eval_shape)."""
    size = model_config.image_size
    image = jnp.zeros((batch_size, size, size, 3), jnp.float32)
    inputs = {"source": image, "driving": image}
    if model_config.dense_motion.num_extra_motions:
        inputs["motion_3d"] = jnp.zeros((batch_size, size, size, 2), jnp.float32)
        inputs["coverage_3d"] = jnp.zeros((batch_size, size, size), jnp.float32)
        inputs["rendered_3d"] = image
    return inputs


def init_variables(model_config, rng: jax.Array, batch_size: int = 1) -> dict:
    """Generator-side variables {'params', 'batch_stats'} for the config."""
    return build_model(model_config).init(
        rng, **example_inputs(model_config, batch_size), train=False
    )


def init_discriminator_variables(model_config, rng: jax.Array, batch_size: int = 1) -> dict:
    size = model_config.image_size
    disc = build_discriminator(model_config)
    pyramid = {
        f"prediction_{s}": jnp.zeros((batch_size, round(size * s), round(size * s), 3))
        for s in disc.scales
    }
    kp = jnp.zeros((batch_size, model_config.num_kp, 2))
    return disc.init(rng, pyramid, kp, train=False)
