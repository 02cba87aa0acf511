"""pytorch-fid's InceptionV3 (the FID network): pool3 features of images, NHWC.

pytorch-fid 0.3.0 `InceptionV3(output_blocks=[3], resize_input=True, normalize_input=True)`:
torchvision's Inception3 trunk (`fid_inception_v3()`: Conv2d_1a_3x3 .. Mixed_7c) with the TF
2015-12-05 weights (`pt_inception-2015-12-05-6726825d.pth`) and the FID blocks that make it
match TensorFlow's graph: the branch_pool average pools of Mixed_5b-5d, 6b-6e and 7b exclude
the zero padding (`count_include_pad=False`), and Mixed_7c's branch_pool is a 3x3 max pool.
Images in [0, 1] are resized to 299x299 (bilinear, align_corners=False, no anti-aliasing), put
in [-1, 1], and the 8x8x2048 output of Mixed_7c is averaged to the 2048-d pool3 vector.

Submodules carry the PyTorch attribute names (`Mixed_5b/branch5x5_2/conv`, `.../bn`), so
converters/torch_layout.py maps them to the state-dict keys (`Mixed_5b.branch5x5_2.conv.weight`,
`.bn.running_var`, ...) without renames; the 1008-class `fc` is not part of the model
(converters/inception.py drops it). BatchNorm always uses its running statistics: the network
is a frozen metric.

Without converted weights (`python -m converters.inception`), `init_random` gives a randomly
initialised network and FID measures nothing comparable: callers must say so with
`warn_random_weights`.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from maskrenderer_jax.nets import random_weights

Dtype = Any

INPUT_SIZE = 299  # pytorch-fid resizes every input to 299x299
MIN_SIZE = 75  # the smallest input the trunk takes (Mixed_7a leaves a 1x1 map)
FEATURES = 2048  # pool3
BN_EPSILON = 1e-3  # torchvision BasicConv2d: BatchNorm2d(eps=0.001), as TF's Inception
# Full float32 convs and resize also on GPU/TPU (whose default passes are TF32/bf16): pool3
# feeds FID statistics that are compared across implementations.
EXACT = jax.lax.Precision.HIGHEST


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


class BasicConv2d(nn.Module):
    """torchvision BasicConv2d: conv (no bias) -> BatchNorm (eps 0.001, inference) -> ReLU."""

    features: int
    kernel_size: int | tuple[int, int] = 1
    stride: int = 1
    padding: int | tuple[int, int] = 0
    precision: Any = EXACT
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """[B, H, W, C] -> [B, H', W', features] (torch Conv2d output size), `dtype`."""
        ph, pw = _pair(self.padding)
        x = nn.Conv(
            self.features,
            _pair(self.kernel_size),
            strides=self.stride,
            padding=((ph, ph), (pw, pw)),
            use_bias=False,
            precision=self.precision,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="conv",
        )(x)
        x = nn.BatchNorm(
            use_running_average=True,
            epsilon=BN_EPSILON,
            dtype=jnp.float32,
            param_dtype=self.param_dtype,
            name="bn",
        )(x)
        return nn.relu(x).astype(self.dtype)


def _avg_pool_3x3(x: jax.Array) -> jax.Array:
    # FID patch (pytorch-fid FIDInceptionA/C/E_1): TF's average pool divides by the number of
    # in-image cells, not 9, at the border (F.avg_pool2d(..., count_include_pad=False)).
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")  # torch floors the size


class _Block(nn.Module):
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def conv(self, name: str, features: int, kernel=1, stride=1, padding=0) -> BasicConv2d:
        return BasicConv2d(
            features,
            kernel_size=kernel,
            stride=stride,
            padding=padding,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name=name,
        )


class InceptionA(_Block):
    """Mixed_5b/5c/5d (FIDInceptionA): [B, H, W, C] -> [B, H, W, 224 + pool_features]."""

    pool_features: int = 32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b1 = self.conv("branch1x1", 64)(x)
        b5 = self.conv("branch5x5_1", 48)(x)
        b5 = self.conv("branch5x5_2", 64, 5, padding=2)(b5)
        b3 = self.conv("branch3x3dbl_1", 64)(x)
        b3 = self.conv("branch3x3dbl_2", 96, 3, padding=1)(b3)
        b3 = self.conv("branch3x3dbl_3", 96, 3, padding=1)(b3)
        bp = self.conv("branch_pool", self.pool_features)(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(_Block):
    """Mixed_6a: [B, H, W, C] -> [B, (H - 3) // 2 + 1, (W - 3) // 2 + 1, 480 + C]."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b3 = self.conv("branch3x3", 384, 3, stride=2)(x)
        bd = self.conv("branch3x3dbl_1", 64)(x)
        bd = self.conv("branch3x3dbl_2", 96, 3, padding=1)(bd)
        bd = self.conv("branch3x3dbl_3", 96, 3, stride=2)(bd)
        return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x)], axis=-1)


class InceptionC(_Block):
    """Mixed_6b..6e (FIDInceptionC): [B, H, W, C] -> [B, H, W, 768]."""

    channels_7x7: int = 128

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c7 = self.channels_7x7
        b1 = self.conv("branch1x1", 192)(x)
        b7 = self.conv("branch7x7_1", c7)(x)
        b7 = self.conv("branch7x7_2", c7, (1, 7), padding=(0, 3))(b7)
        b7 = self.conv("branch7x7_3", 192, (7, 1), padding=(3, 0))(b7)
        bd = self.conv("branch7x7dbl_1", c7)(x)
        bd = self.conv("branch7x7dbl_2", c7, (7, 1), padding=(3, 0))(bd)
        bd = self.conv("branch7x7dbl_3", c7, (1, 7), padding=(0, 3))(bd)
        bd = self.conv("branch7x7dbl_4", c7, (7, 1), padding=(3, 0))(bd)
        bd = self.conv("branch7x7dbl_5", 192, (1, 7), padding=(0, 3))(bd)
        bp = self.conv("branch_pool", 192)(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(_Block):
    """Mixed_7a: [B, H, W, C] -> [B, (H - 3) // 2 + 1, (W - 3) // 2 + 1, 512 + C]."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b3 = self.conv("branch3x3_1", 192)(x)
        b3 = self.conv("branch3x3_2", 320, 3, stride=2)(b3)
        b7 = self.conv("branch7x7x3_1", 192)(x)
        b7 = self.conv("branch7x7x3_2", 192, (1, 7), padding=(0, 3))(b7)
        b7 = self.conv("branch7x7x3_3", 192, (7, 1), padding=(3, 0))(b7)
        b7 = self.conv("branch7x7x3_4", 192, 3, stride=2)(b7)
        return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)


class InceptionE(_Block):
    """Mixed_7b (FIDInceptionE_1, pool 'avg') and Mixed_7c (FIDInceptionE_2, pool 'max'):
    [B, H, W, C] -> [B, H, W, 2048]."""

    pool: str = "avg"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b1 = self.conv("branch1x1", 320)(x)
        b3 = self.conv("branch3x3_1", 384)(x)
        b3 = jnp.concatenate(
            [
                self.conv("branch3x3_2a", 384, (1, 3), padding=(0, 1))(b3),
                self.conv("branch3x3_2b", 384, (3, 1), padding=(1, 0))(b3),
            ],
            axis=-1,
        )
        bd = self.conv("branch3x3dbl_1", 448)(x)
        bd = self.conv("branch3x3dbl_2", 384, 3, padding=1)(bd)
        bd = jnp.concatenate(
            [
                self.conv("branch3x3dbl_3a", 384, (1, 3), padding=(0, 1))(bd),
                self.conv("branch3x3dbl_3b", 384, (3, 1), padding=(1, 0))(bd),
            ],
            axis=-1,
        )
        if self.pool == "max":
            # FID patch (FIDInceptionE_2): the TF graph max-pools here (-inf padding, as torch).
            pooled = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
        elif self.pool == "avg":
            pooled = _avg_pool_3x3(x)
        else:
            raise ValueError(f"InceptionE pool must be 'avg' or 'max', got {self.pool!r}")
        bp = self.conv("branch_pool", 192)(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3(nn.Module):
    """pytorch-fid's FID InceptionV3 up to pool3 (its output block 3)."""

    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __call__(self, images: jax.Array) -> jax.Array:
        """pool3 features of an image batch, as pytorch-fid's `InceptionV3([3])(x)[0]`.

        Args:
          images: [B, H, W, 3] float RGB in [0, 1], any H, W (resized to 299x299).
        Returns:
          [B, 2048] float32 (non-negative: averaged ReLU outputs).
        """
        return self.trunk(preprocess(images))

    @nn.compact
    def trunk(self, x: jax.Array) -> jax.Array:
        """The network without the resize: Conv2d_1a_3x3 .. Mixed_7c, then the global mean.

        Args:
          x: [B, H, W, 3] float RGB in [-1, 1]; 299x299 for FID, any H, W >= 75 runs.
        Returns:
          [B, 2048] float32.
        """
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = x.astype(self.dtype)
        x = BasicConv2d(32, 3, stride=2, name="Conv2d_1a_3x3", **kw)(x)  # 149 x 149 at 299
        x = BasicConv2d(32, 3, name="Conv2d_2a_3x3", **kw)(x)  # 147
        x = BasicConv2d(64, 3, padding=1, name="Conv2d_2b_3x3", **kw)(x)
        x = _max_pool_3x3_s2(x)  # 73
        x = BasicConv2d(80, 1, name="Conv2d_3b_1x1", **kw)(x)
        x = BasicConv2d(192, 3, name="Conv2d_4a_3x3", **kw)(x)  # 71
        x = _max_pool_3x3_s2(x)  # 35
        x = InceptionA(pool_features=32, name="Mixed_5b", **kw)(x)  # 256 channels
        x = InceptionA(pool_features=64, name="Mixed_5c", **kw)(x)  # 288
        x = InceptionA(pool_features=64, name="Mixed_5d", **kw)(x)  # 288
        x = InceptionB(name="Mixed_6a", **kw)(x)  # 17 x 17 x 768
        for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160)):
            x = InceptionC(channels_7x7=c7, name=name, **kw)(x)
        x = InceptionC(channels_7x7=192, name="Mixed_6e", **kw)(x)
        x = InceptionD(name="Mixed_7a", **kw)(x)  # 8 x 8 x 1280
        x = InceptionE(pool="avg", name="Mixed_7b", **kw)(x)  # 2048
        x = InceptionE(pool="max", name="Mixed_7c", **kw)(x)
        return jnp.mean(x.astype(jnp.float32), axis=(1, 2))  # AdaptiveAvgPool2d((1, 1))


def preprocess(images: jax.Array) -> jax.Array:
    """pytorch-fid's input step: [B, H, W, 3] in [0, 1] -> [B, 299, 299, 3] float32 in [-1, 1].

    F.interpolate(size=(299, 299), mode='bilinear', align_corners=False) (the identity at 299),
    then 2x - 1.
    """
    x = images.astype(jnp.float32)
    # Separable: rows then columns, each a [299, n] matrix with torch's two weights per row
    # (torch's 2-D kernel equals two 1-D passes to 2e-7). Not layers.resize_bilinear:
    # jax.image.scale_and_translate is up to 1.5e-5 off torch at 64 -> 299 (its own sample
    # positions and kernel weights), which the network amplifies ~50x into pool3.
    if x.shape[1] != INPUT_SIZE:
        rows = _torch_bilinear_weights(x.shape[1], INPUT_SIZE)
        x = jnp.einsum("oh,bhwc->bowc", rows, x, precision=EXACT)
    if x.shape[2] != INPUT_SIZE:
        cols = _torch_bilinear_weights(x.shape[2], INPUT_SIZE)
        x = jnp.einsum("ow,bhwc->bhoc", cols, x, precision=EXACT)
    return 2.0 * x - 1.0


def _torch_bilinear_weights(in_size: int, out_size: int) -> np.ndarray:
    """[out_size, in_size] float32 weights of torch's bilinear resize along one axis.

    As ATen's CPU kernel (UpSampleKernel.cpp `compute_source_index_and_lambda`, float32 for
    float inputs): src = max(in / out * (dst + 0.5) - 0.5, 0), i0 = floor(src),
    i1 = min(i0 + 1, in - 1), weights (1 - l, l) with l = src - i0. The kernel is compiled with
    the multiply-subtract fused (one rounding): computing src exactly in float64 and rounding
    once matches torch's resized values to 5e-8, where two float32 roundings (src an ulp off,
    7.6e-6 at src ~ 100) leave them up to 2e-6 off.
    """
    scale = np.float32(in_size) / np.float32(out_size)
    dst = np.arange(out_size, dtype=np.float64) + 0.5
    src = np.maximum((np.float64(scale) * dst - 0.5).astype(np.float32), np.float32(0.0))
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    lam1 = np.clip(src - i0.astype(np.float32), 0.0, 1.0).astype(np.float32)
    i1 = np.minimum(i0 + 1, in_size - 1)
    weights = np.zeros((out_size, in_size), np.float32)
    rows = np.arange(out_size)
    np.add.at(weights, (rows, i0), np.float32(1.0) - lam1)
    np.add.at(weights, (rows, i1), lam1)
    return weights


@jax.jit
def _preprocess(images: jax.Array) -> jax.Array:
    return preprocess(images)


@jax.jit
def _trunk(variables: dict, x: jax.Array) -> jax.Array:
    return InceptionV3().apply(variables, x, method=InceptionV3.trunk)


def features(variables: dict, images: jax.Array) -> jax.Array:
    """pool3 [B, 2048] float32 of images [B, H, W, 3] in [0, 1] (any size), with `variables`
    ({'params', 'batch_stats'}, e.g. from converters/inception.py).

    Two module-level jits: the resize compiles per input shape, the network once per batch
    size, so batches of different image sizes share the network's compilation. Also
    traceable inside a caller's jit.
    """
    return _trunk(variables, _preprocess(images))


def init_random(rng: jax.Array, *, param_dtype: Dtype = jnp.float32) -> dict:
    """Randomly initialised {'params', 'batch_stats'} for `InceptionV3().apply`: conv kernels
    LeCun-normal (flax nn.Conv's default: truncated normal, std sqrt(1 / fan_in) / .8796),
    BatchNorm scale 1, bias 0, mean 0, var 1 (flax's defaults).

    Only for running without converted weights: call `warn_random_weights` alongside.
    """
    # Not `InceptionV3().init`: one initialiser per layer, ~45 s to compile on 2 CPU cores.
    x = jax.ShapeDtypeStruct((1, MIN_SIZE, MIN_SIZE, 3), jnp.float32)
    init = functools.partial(InceptionV3(param_dtype=param_dtype).init, method=InceptionV3.trunk)
    return random_weights.flax_default_variables(jax.eval_shape(init, rng, x), rng)


def warn_random_weights() -> str:
    """Logs (logging.WARNING) and returns the message that InceptionV3 runs on random weights."""
    return random_weights.warn_random_weights(
        "FID InceptionV3",
        "converters.inception",
        "FID is then meaningless and not comparable to pytorch-fid's or the paper's.",
    )
