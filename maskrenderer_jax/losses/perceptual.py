"""Pyramid perceptual (reconstruction) loss, FOMM's (§3.3; Johnson et al.), which MaskRenderer
keeps as its reconstruction term. (Its equation number in the MaskRenderer paper is not
verified here, so none is cited.)
"""

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from maskrenderer_jax.losses.pyramid import FOMM_SCALES, image_pyramid, pyramid_key

FeaturesFn = Callable[[jax.Array], Sequence[jax.Array]]


def perceptual_loss(
    features_fn: FeaturesFn,
    prediction: jax.Array,
    target: jax.Array,
    scales: Sequence[float] = FOMM_SCALES,
    weights: Sequence[float] = (10.0,) * 5,
) -> jax.Array:
    """sum_s sum_i w_i mean|phi_i(P_s(prediction)) - sg(phi_i(P_s(target)))|, as FOMM.

    FOMM's GeneratorFullModel: per pyramid scale s, VGG19 features of the generated and the
    driving image, one L1 mean per layer i (over batch, space and channels), weighted by
    `loss_weights['perceptual'][i]` ([10]*5) and summed over layers and scales. The target
    features are detached (`y_vgg[i].detach()`), here `stop_gradient`.

    Args:
      features_fn: images [N, h, w, 3] float32 in [0, 1] -> list of feature maps (VGG19
        relu1_1..relu5_1 for MaskRenderer/FOMM, normalisation inside).
      prediction, target: [B, H, W, 3] float32 in [0, 1].
      scales: pyramid scales (FOMM: [1, 0.5, 0.25, 0.125]).
      weights: one weight per feature map; layers beyond `len(weights)` and layers of weight 0
        are skipped.
    Returns:
      scalar float32 (already weighted; FOMM's `loss_values['perceptual']`).
    """
    pyr_pred = image_pyramid(prediction, scales)
    pyr_real = image_pyramid(target, scales)
    total = jnp.zeros((), jnp.float32)
    for scale in scales:
        key = pyramid_key(scale)
        # Two calls, as FOMM: through one call on both halves, the backward pass would run the
        # network's input gradient for the target half too (half of VGG19's backward time).
        pred_feats = features_fn(pyr_pred[key])
        real_feats = features_fn(jax.lax.stop_gradient(pyr_real[key]))
        for layer, (weight, pred_feat, real_feat) in enumerate(
            zip(weights, pred_feats, real_feats, strict=False)
        ):
            if weight == 0:
                continue
            if pred_feat.size == 0:
                raise ValueError(
                    f"pyramid scale {scale} gives {pyr_pred[key].shape[1]}x"
                    f"{pyr_pred[key].shape[2]} images, too small for feature map {layer} "
                    f"(empty): drop the scale or that layer's weight"
                )
            x = pred_feat.astype(jnp.float32)
            y = real_feat.astype(jnp.float32)
            total = total + weight * jnp.mean(jnp.abs(x - y))
    return total
