"""ArcFace identity embedding: insightface arcface_torch's IResNet (`iresnet50`, `iresnet100`).

The network of recognition/arcface_torch/backbones/iresnet.py: conv1 3x3 s1 -> bn1 -> PReLU,
layer1..layer4 of `IBasicBlock`s (widths 64, 128, 256, 512; the first block of each layer has
stride 2 and a 1x1 conv + BN shortcut), bn2, dropout (the identity at inference), flatten,
fc 512*7*7 -> 512, `features` = BatchNorm1d(512). Every BatchNorm has eps 1e-5 (momentum is
torch's default, irrelevant at inference). An IBasicBlock is pre-activation style without
ReLU: bn1 -> conv1 3x3 -> bn2 -> PReLU -> conv2 3x3 (stride) -> bn3, plus the shortcut.

Variables are named as the published `backbone.pth` state dicts (`conv1`, `prelu`,
`layer3_13/bn2`, `layer1_0/downsample_0`, `fc`, `features`), so converters/torch_layout.py maps
them mechanically (PReLU's per-channel `negative_slope` is torch's `weight`). torch flattens
layer4 as NCHW, channel-major; the module does the same (`b h w c -> b (c h w)`), so `fc`'s
weight is the plain transpose of torch's.

Inputs are aligned 112x112 crops (see `align_crop`), RGB in [0, 1]; the module applies
arcface_torch's normalisation (inference.py: img / 255, - 0.5, / 0.5). The output is the raw
512-d embedding; CSIM/ISIM take the cosine similarity.

Without converted weights (`python -m converters.arcface`), `init_random` gives a randomly
initialised network and identity metrics are meaningless: callers must say so with
`warn_random_weights`.
"""

from collections.abc import Sequence
from functools import partial
from typing import Any

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from maskrenderer_jax.models.layers import batch_norm
from maskrenderer_jax.nets import random_weights

Dtype = Any

# Blocks per layer (arcface_torch backbones/iresnet.py iresnet18 .. iresnet200).
ARCHS = {
    "r18": (2, 2, 2, 2),
    "r34": (3, 4, 6, 3),
    "r50": (3, 4, 14, 3),
    "r100": (3, 13, 30, 3),
    "r200": (6, 26, 60, 6),
}
WIDTHS = (64, 128, 256, 512)
INPUT_SIZE = 112  # fc expects layer4 at 7x7 (fc_scale = 7 * 7): 112 / 2**4
EMBEDDING_SIZE = 512  # num_features

# insightface utils/face_align.py `arcface_dst`: (x, y) pixel positions in the 112x112 crop of
# the left eye, right eye, nose tip, left and right mouth corners (left = smaller x).
ARCFACE_TEMPLATE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    np.float32,
)


class PReLU(nn.Module):
    """torch nn.PReLU(C): x if x >= 0 else slope[c] * x; slopes start at torch's 0.25."""

    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        slope = self.param(
            "negative_slope", nn.initializers.constant(0.25), (x.shape[-1],), self.param_dtype
        )
        return jnp.where(x >= 0, x, slope.astype(x.dtype) * x)


class IBasicBlock(nn.Module):
    """bn1 -> conv1 3x3 -> bn2 -> PReLU -> conv2 3x3 (stride) -> bn3, + shortcut; no ReLU.

    Attributes:
      width: output channels.
      strides: of conv2 and of the shortcut's 1x1 conv (2 in the first block of each layer).
      downsample: add the projection shortcut (`downsample.0` conv, `downsample.1` BN).
    """

    width: int
    strides: int = 1
    downsample: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = partial(nn.Conv, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype)
        bn = partial(batch_norm, False, self.param_dtype)  # frozen: running statistics
        out = bn("bn1")(x)
        out = conv(self.width, (3, 3), padding=((1, 1), (1, 1)), name="conv1")(out)
        out = PReLU(self.param_dtype, name="prelu")(bn("bn2")(out))
        out = conv(
            self.width, (3, 3), strides=self.strides, padding=((1, 1), (1, 1)), name="conv2"
        )(out)
        out = bn("bn3")(out)
        if self.downsample:
            x = conv(
                self.width, (1, 1), strides=self.strides, padding="VALID", name="downsample_0"
            )(x)
            x = bn("downsample_1")(x)
        return out + x


class IResNet(nn.Module):
    """arcface_torch IResNet at inference (eval-mode BatchNorm, no dropout).

    Attributes:
      stage_sizes: blocks per layer; ARCHS['r50'] (the default) or ARCHS['r100'] for the
        published backbones.
    """

    stage_sizes: Sequence[int] = ARCHS["r50"]
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        """Identity embeddings of aligned face crops.

        Args:
          images: [B, 112, 112, 3] float RGB in [0, 1], aligned as insightface's norm_crop
            (`align_crop`).
        Returns:
          [B, 512] float32, not normalised (the backbone's `features` output).
        """
        if images.shape[1:] != (INPUT_SIZE, INPUT_SIZE, 3):
            raise ValueError(
                f"IResNet takes [B, {INPUT_SIZE}, {INPUT_SIZE}, 3] aligned crops (its fc "
                f"expects a 7x7 layer4); got {images.shape}"
            )
        bn = partial(batch_norm, False, self.param_dtype)
        x = ((images.astype(jnp.float32) - 0.5) / 0.5).astype(self.dtype)  # inference.py
        x = nn.Conv(
            64,
            (3, 3),
            padding=((1, 1), (1, 1)),
            use_bias=False,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="conv1",
        )(x)
        x = PReLU(self.param_dtype, name="prelu")(bn("bn1")(x))
        for i, (blocks, width) in enumerate(zip(self.stage_sizes, WIDTHS, strict=True)):
            for j in range(blocks):
                x = IBasicBlock(
                    width,
                    strides=2 if j == 0 else 1,
                    downsample=j == 0,  # stride 2 in every layer's first block
                    dtype=self.dtype,
                    param_dtype=self.param_dtype,
                    name=f"layer{i + 1}_{j}",
                )(x)
        x = bn("bn2")(x)
        # torch.flatten(x, 1) of NCHW: channel-major, so fc's weight needs no permutation.
        x = einops.rearrange(x, "b h w c -> b (c h w)")
        x = nn.Dense(EMBEDDING_SIZE, dtype=self.dtype, param_dtype=self.param_dtype, name="fc")(x)
        return bn("features")(x).astype(jnp.float32)  # BatchNorm1d(512)


def stage_sizes_of(variables: dict) -> tuple[int, ...]:
    """Blocks per layer of IResNet variables (from the `layer<i>_<j>` names; static in jit)."""
    names = variables["params"].keys()
    sizes = tuple(sum(1 for name in names if name.startswith(f"layer{i}_")) for i in range(1, 5))
    if 0 in sizes:
        raise ValueError(f"not IResNet variables: blocks per layer {sizes}; found {sorted(names)}")
    return sizes


@jax.jit  # module level: one compile per architecture and batch shape in the process
def embed(variables: dict, images: jax.Array) -> jax.Array:
    """`IResNet().apply` with the architecture read off `variables` ({'params', 'batch_stats'}).

    images [B, 112, 112, 3] RGB in [0, 1], aligned -> [B, 512] float32 raw embeddings.
    """
    return IResNet(stage_sizes=stage_sizes_of(variables)).apply(variables, images)


def init_random(
    rng: jax.Array, arch: str | Sequence[int] = "r50", *, param_dtype: Dtype = jnp.float32
) -> dict:
    """Randomly initialised {'params', 'batch_stats'} (flax's default initialisers).

    arch: a key of ARCHS or blocks per layer. Only for running without converted weights: call
    `warn_random_weights` alongside.
    """
    stage_sizes = ARCHS[arch] if isinstance(arch, str) else tuple(arch)
    model = IResNet(stage_sizes=stage_sizes, param_dtype=param_dtype)
    # fc's input width fixes the input size at 112. One compile costs less than dispatching
    # (and compiling) every op of an eager 112 px pass.
    return jax.jit(model.init)(rng, jnp.zeros((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32))


def warn_random_weights() -> str:
    """Logs (logging.WARNING) and returns the message that ArcFace runs on random weights."""
    return random_weights.warn_random_weights(
        "ArcFace IResNet",
        "converters.arcface",
        "CSIM/ISIM/AID identity metrics are then meaningless.",
    )


# ------------------------------------------------------------------------------- alignment


def arcface_template(size: int = INPUT_SIZE) -> np.ndarray:
    """The 5-point template of a size x size crop ([5, 2] float32, (x, y) pixels).

    insightface's estimate_norm: multiples of 112 scale ARCFACE_TEMPLATE_112; multiples of 128
    scale it by size / 128 and shift x by 8 * size / 128 (the 112 template centred in 128).
    """
    if size % 112 == 0:
        return ARCFACE_TEMPLATE_112 * np.float32(size / 112)
    if size % 128 == 0:
        ratio = np.float32(size / 128)
        return ARCFACE_TEMPLATE_112 * ratio + np.array([8 * ratio, 0], np.float32)
    raise ValueError(f"insightface aligns to multiples of 112 or 128 px; got {size}")


@jax.jit  # eager, its dozen small ops would each dispatch (and compile) alone
def similarity_transform(src_points: jax.Array, dst_points: jax.Array) -> jax.Array:
    """The least-squares similarity (rotation, uniform scale, translation) mapping src to dst.

    Umeyama (1991) with scaling, as skimage's SimilarityTransform.estimate(src, dst) (which
    insightface's estimate_norm calls with src = landmarks, dst = template). Reflections are
    excluded as skimage excludes them; degenerate points (all equal or collinear) are not
    special-cased as skimage's rank tests do.

    Args:
      src_points, dst_points: [..., N, 2] (x, y), N >= 2.
    Returns:
      [..., 3, 3] homogeneous matrix T with T @ [x, y, 1] ~ [x', y', 1].
    """
    src = jnp.asarray(src_points, jnp.float32)
    dst = jnp.asarray(dst_points, jnp.float32)
    src_mean, dst_mean = src.mean(axis=-2), dst.mean(axis=-2)
    src_d, dst_d = src - src_mean[..., None, :], dst - dst_mean[..., None, :]
    # Landmark coordinates are ~100 px: keep every product float32 (no TF32/bf16 passes).
    einsum = partial(jnp.einsum, precision=jax.lax.Precision.HIGHEST)
    a = einsum("...ni,...nj->...ij", dst_d, src_d) / src.shape[-2]  # covariance
    u, s, vt = jnp.linalg.svd(a)
    # Flip the last singular direction when det(A) < 0: the best rotation, not a reflection.
    last = jnp.where(jnp.linalg.det(a) < 0, -1.0, 1.0)
    d = jnp.stack([jnp.ones_like(last), last], axis=-1)
    rotation = einsum("...ij,...j,...jk->...ik", u, d, vt)
    scale = jnp.sum(s * d, axis=-1) / jnp.sum(jnp.var(src, axis=-2), axis=-1)
    linear = scale[..., None, None] * rotation
    translation = dst_mean - einsum("...ij,...j->...i", linear, src_mean)
    top = jnp.concatenate([linear, translation[..., None]], axis=-1)
    bottom = jnp.broadcast_to(jnp.array([0.0, 0.0, 1.0], jnp.float32), (*top.shape[:-2], 1, 3))
    return jnp.concatenate([top, bottom], axis=-2)


@partial(jax.jit, static_argnames="size")
def align_crop(image: jax.Array, five_points: jax.Array, size: int = INPUT_SIZE) -> jax.Array:
    """insightface's norm_crop: the size x size crop that puts five landmarks on the template.

    The transform is `similarity_transform(five_points, arcface_template(size))`; pixel (x, y)
    of the crop samples the image at its inverse, bilinearly, with zeros outside the image
    (cv2.warpAffine, INTER_LINEAR, BORDER_CONSTANT 0; pixel centres at integer coordinates).
    cv2 rounds the sampling weights to 1/32 px; this does not, so values differ from
    insightface's by at most ~1/64 of the local intensity step.

    Args:
      image: [H, W, C] float (any range; C channels interpolated alike). vmap for batches.
      five_points: [5, 2] (x, y) pixel positions in `image`, in the template's order (left
        eye, right eye, nose, left mouth corner, right mouth corner).
      size: a multiple of 112 or 128 (112 for IResNet).
    Returns:
      [size, size, C] float32.
    """
    matrix = similarity_transform(five_points, arcface_template(size))
    inverse = jnp.linalg.inv(matrix)
    ys, xs = jnp.meshgrid(
        jnp.arange(size, dtype=jnp.float32), jnp.arange(size, dtype=jnp.float32), indexing="ij"
    )
    grid = jnp.stack([xs, ys, jnp.ones_like(xs)])  # [3, size, size]
    # (x, y, 1) in the image; HIGHEST: a TF32 product would move samples by ~0.05 px.
    source = jnp.einsum("ij,jhw->ihw", inverse, grid, precision=jax.lax.Precision.HIGHEST)
    coordinates = [source[1], source[0]]  # map_coordinates indexes (row, column)
    image = jnp.asarray(image, jnp.float32)
    sample = partial(jax.scipy.ndimage.map_coordinates, order=1, mode="constant", cval=0.0)
    channels = jax.vmap(lambda plane: sample(plane, coordinates), in_axes=-1, out_axes=-1)
    return channels(image)
