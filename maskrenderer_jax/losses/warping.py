"""Warping loss L_W, MaskRenderer eq. (7), as the Thin-Plate-Spline Motion Model computes it.

TPSMM (`modules/model.py`, `warp_loss`, weight 10): for each encoder level, the L1 mean
between the warped (and occlusion-gated) source encoder map of the generator and the driving
image's encoder map at that level, gated by the same occlusion mask, summed over levels.
TPSMM's `InpaintingNetwork.get_encode` detaches everything on the driving side (each level's
input, the encoder output and the occlusion mask), so the driving features are a fixed target:
the loss trains the motion/occlusion path to bring source features to where the driver's are,
not the encoder to move the driver's features towards a bad warp (which would also let the
encoder collapse both sides). Here: `stop_gradient` on the gated driving features.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from maskrenderer_jax.models.layers import resize_bilinear


def warping_loss(
    warped_features: Sequence[jax.Array],
    driving_features: Sequence[jax.Array],
    occlusion_maps: Sequence[jax.Array] | None = None,
) -> jax.Array:
    """sum_l mean|sg(O_l * E_l(I_D)) - O_l * W(E_l(I_S))| (unweighted; TPSMM/paper weight 10).

    Args:
      warped_features: the generator's 'warped_features', finest first, [B, h_l, w_l, C_l]
        (already multiplied by their occlusion masks).
      driving_features: `OcclusionAwareGenerator.encode(driving)`, finest first. When the
        generator warps fewer levels (FOMM: the deepest only), the deepest levels are paired.
      occlusion_maps: the dense-motion 'occlusion_maps' (finest first, [B, h, w, 1]) that
        gated `warped_features`; the driving features are gated the same way (TPSMM's
        `occlude_input`), one mask per level or a single mask resized to every level, as the
        generator does. None: no gating.
    Returns:
      scalar float32.
    """
    if len(warped_features) > len(driving_features):
        raise ValueError(
            f"{len(warped_features)} warped levels but {len(driving_features)} driving levels"
        )
    offset = len(driving_features) - len(warped_features)
    total = jnp.zeros((), jnp.float32)
    for i, warped in enumerate(warped_features):
        level = offset + i
        target = driving_features[level].astype(jnp.float32)
        if occlusion_maps:
            mask = occlusion_maps[level] if len(occlusion_maps) > 1 else occlusion_maps[0]
            target = target * resize_bilinear(mask, target.shape[1], target.shape[2])
        target = jax.lax.stop_gradient(target)
        total = total + jnp.mean(jnp.abs(target - warped.astype(jnp.float32)))
    return total
