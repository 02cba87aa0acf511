"""Identity triplet loss L_T, MaskRenderer eq. (6), on face-recognition embeddings (VGGFace2).

Roles: anchor = the source I_S; positive 1 = the self-reenactment I_F (I_S driven by I_D of
the same identity); positive 2 = the cross-reenactment (I_S driven by I_X of another
identity); negative = the cross driver I_X. The cross-reenactment must keep the source's
identity and not leak the driver's, which is what the second triplet says; alpha = 0.8 splits
the weight between the two triplets (paper: alpha 0.8, margin 1).

Distance: plain Euclidean on L2-normalised embeddings, with torch's `pairwise_distance` eps
(||a - b + 1e-6||), i.e. `torch.nn.TripletMarginLoss(margin=1.0, p=2)` with batch mean. Margin 1
is that class's default, the likely implementation; with unit vectors d lies in [0, 2], so a
margin of 1 is reachable (d(a, n) >= d(a, p) + 1). With squared distances (in [0, 4]) the same
margin would mean cos(a, p) - cos(a, n) >= 0.5, a looser constraint for imperfect positives.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """torch `F.normalize(x, dim=-1)`: x / max(||x||, eps), float32."""
    x = x.astype(jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def pairwise_distance(a: jax.Array, b: jax.Array, eps: float = 1e-6) -> jax.Array:
    """torch `F.pairwise_distance(a, b)` = ||a - b + eps||_2 over the last axis, [B].

    The square root's gradient is taken as 0 where the distance is exactly 0 (instead of NaN).
    """
    sq = jnp.sum((a - b + eps) ** 2, axis=-1)
    safe = jnp.where(sq > 0, sq, 1.0)
    return jnp.where(sq > 0, jnp.sqrt(safe), 0.0)


def triplet_margin(anchor, positive, negative, margin: float = 1.0) -> jax.Array:
    """mean_b max(0, d(a, p) - d(a, n) + margin) (torch TripletMarginLoss, p=2, swap=False)."""
    gap = pairwise_distance(anchor, positive) - pairwise_distance(anchor, negative)
    return jnp.mean(jnp.maximum(gap + margin, 0.0))


def triplet_loss(
    anchor: jax.Array,
    positive_self: jax.Array,
    positive_cross: jax.Array,
    negative: jax.Array,
    alpha: float = 0.8,
    margin: float = 1.0,
    normalize: bool = True,
) -> jax.Array:
    """Eq. (6): alpha * TML(a, p_self, n) + (1 - alpha) * TML(a, p_cross, n).

    TML(a, p, n) = mean_b max(0, ||a - p|| - ||a - n|| + margin) on L2-normalised embeddings.

    Args:
      anchor, positive_self, positive_cross, negative: [B, D] embeddings (any float dtype).
      alpha: weight of the self-reenactment triplet (paper: 0.8).
      margin: triplet margin (paper: 1).
      normalize: L2-normalise the embeddings first (set False if they already are).
    Returns:
      scalar float32.
    """
    embs = (anchor, positive_self, positive_cross, negative)
    a, p_self, p_cross, n = (l2_normalize(e) if normalize else e.astype(jnp.float32) for e in embs)
    return alpha * triplet_margin(a, p_self, n, margin) + (1.0 - alpha) * triplet_margin(
        a, p_cross, n, margin
    )


def identity_triplet_loss(
    embed: Callable[[jax.Array], jax.Array],
    source: jax.Array,
    self_reenacted: jax.Array,
    cross_reenacted: jax.Array,
    cross_driver: jax.Array,
    alpha: float = 0.8,
    margin: float = 1.0,
) -> jax.Array:
    """Eq. (6) from images: one `embed` call on all four [B, H, W, 3] batches.

    `embed` maps [N, H, W, 3] float32 in [0, 1] to [N, D] (resizing and the VGGFace2
    normalisation inside) and must treat batch elements independently. The anchor and the
    negative are real frames: their embeddings are constants (`stop_gradient`), gradients
    reach the generator through the two reenactments only.
    """
    batch = source.shape[0]
    emb = embed(jnp.concatenate([source, self_reenacted, cross_reenacted, cross_driver], axis=0))
    a, p_self, p_cross, n = (emb[i * batch : (i + 1) * batch] for i in range(4))
    a, n = jax.lax.stop_gradient(a), jax.lax.stop_gradient(n)
    return triplet_loss(a, p_self, p_cross, n, alpha=alpha, margin=margin)
