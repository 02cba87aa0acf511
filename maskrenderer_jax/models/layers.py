"""Building blocks shared by every network: coordinate grids, warping, resizing, FOMM's conv
blocks, anti-alias downsampling, CBAM and the hourglass.

Conventions (docs/DESIGN_NOTES.md): NHWC; coordinates (x, y) in [-1, 1] with pixel centres
at the edges (torch `align_corners=True`). Warping, resizing and normalisation statistics run
in float32 whatever the compute dtype.
"""

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

Dtype = Any


def coordinate_grid(height: int, width: int) -> jax.Array:
    """[H, W, 2] float32 (x, y) with x = 2i/(W-1) - 1 (FOMM's make_coordinate_grid)."""
    x = 2.0 * (jnp.arange(width, dtype=jnp.float32) / (width - 1)) - 1.0
    y = 2.0 * (jnp.arange(height, dtype=jnp.float32) / (height - 1)) - 1.0
    return jnp.stack(jnp.broadcast_arrays(x[None, :], y[:, None]), axis=-1)


def inverse_2x2(matrix: jax.Array) -> jax.Array:
    """[..., 2, 2] -> their inverses, adjugate / determinant (torch.inverse of the keypoint
    jacobians). Closed form rather than jnp.linalg.inv: no LU (a LAPACK / cuSOLVER custom call
    in an exported program, and no ONNX conversion of a batched LU), and exact to float32."""
    a, b = matrix[..., 0, 0], matrix[..., 0, 1]
    c, d = matrix[..., 1, 0], matrix[..., 1, 1]
    adjugate = jnp.stack([jnp.stack([d, -b], axis=-1), jnp.stack([-c, a], axis=-1)], axis=-2)
    return adjugate / (a * d - b * c)[..., None, None]


def kp2gaussian(kp_value: jax.Array, height: int, width: int, variance: float) -> jax.Array:
    """Gaussian blob per keypoint, as FOMM's kp2gaussian.

    Args:
      kp_value: [B, K, 2] (x, y) in [-1, 1].
    Returns:
      [B, H, W, K] float32, exp(-|z - kp|^2 / (2 variance)).
    """
    diff = coordinate_grid(height, width)[None, :, :, None, :] - kp_value[:, None, None, :, :]
    return jnp.exp(-0.5 * jnp.sum(diff**2, axis=-1) / variance)


def warp(inputs: jax.Array, grid: jax.Array) -> jax.Array:
    """Bilinear sampling = torch `grid_sample(inputs, grid, align_corners=True)`, zero padding.

    The one warping function of the repository.

    Args:
      inputs: [B, H, W, C] image or features.
      grid: [B, *S, 2] sampling positions (x, y) in [-1, 1]; (-1, -1) is the centre of the
        top-left pixel. Any number of spatial dims S (e.g. [B, K, h, w, 2] warps the same
        input by K fields at once).
    Returns:
      [B, *S, C] in the dtype of `inputs`; positions outside the image read zeros.
    """
    batch, height, width, channels = inputs.shape
    spatial = grid.shape[1:-1]
    grid = grid.reshape(batch, -1, 2).astype(jnp.float32)
    x = (grid[..., 0] + 1.0) * (0.5 * (width - 1))
    y = (grid[..., 1] + 1.0) * (0.5 * (height - 1))
    x0 = jnp.floor(x)
    y0 = jnp.floor(y)
    flat = inputs.reshape(batch, height * width, channels)
    out = jnp.zeros((batch, x.shape[1], channels), jnp.float32)
    for dx in (0, 1):
        for dy in (0, 1):
            xi, yi = x0 + dx, y0 + dy
            # torch's corner weights, e.g. (x1 - x) for the left one: 1 - |x - xi| has the same
            # value but a zero derivative at x = xi (sign(0) = 0), where torch's is -1: every
            # integer sampling position would lose half its gradient w.r.t. the grid.
            wx = x - x0 if dx else x0 + 1.0 - x
            wy = y - y0 if dy else y0 + 1.0 - y
            weight = wx * wy
            inside = (xi >= 0) & (xi <= width - 1) & (yi >= 0) & (yi <= height - 1)
            index = (jnp.clip(yi, 0, height - 1) * width + jnp.clip(xi, 0, width - 1)).astype(
                jnp.int32
            )
            corner = jnp.take_along_axis(flat, index[..., None], axis=1)
            out = out + corner.astype(jnp.float32) * jnp.where(inside, weight, 0.0)[..., None]
    return out.reshape(batch, *spatial, channels).astype(inputs.dtype)


def resize_bilinear(x: jax.Array, height: int, width: int) -> jax.Array:
    """torch `F.interpolate(mode='bilinear', align_corners=False)` (no anti-aliasing).

    Args:
      x: [B, h, w, C]. Returns [B, height, width, C], float32 arithmetic, input dtype.
    """
    if x.shape[1:3] == (height, width):
        return x
    scale = jnp.array([height / x.shape[1], width / x.shape[2]], jnp.float32)
    out = jax.image.scale_and_translate(
        x.astype(jnp.float32),
        (x.shape[0], height, width, x.shape[3]),
        spatial_dims=(1, 2),
        scale=scale,
        translation=jnp.zeros(2, jnp.float32),
        method="linear",
        antialias=False,
    )
    return out.astype(x.dtype)


def upsample_nearest2x(x: jax.Array) -> jax.Array:
    """[B, H, W, C] -> [B, 2H, 2W, C], torch `F.interpolate(scale_factor=2)` (nearest)."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def gaussian_taps(scale: float) -> np.ndarray:
    """FOMM's anti-alias kernel in one dimension, float64: sigma = (1/s - 1)/2, size
    2*round(4 sigma) + 1, sum 1. FOMM's 2-D kernel is their outer product (`gaussian_kernel`);
    FOMM builds it in float32, which makes it a float32 rounding of this one."""
    sigma = (1.0 / scale - 1.0) / 2.0
    size = 2 * round(sigma * 4) + 1
    coords = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def gaussian_kernel(scale: float) -> np.ndarray:
    """FOMM's 2-D anti-alias kernel (its `down.weight` buffer), float32."""
    taps = gaussian_taps(scale)
    return np.outer(taps, taps).astype(np.float32)


def antialias_matrix(length: int, scale: float) -> np.ndarray:
    """[floor(length * s), length] float64: one axis of FOMM's anti-alias downsampling, the
    zero-padded Gaussian blur then every (1/s)-th sample (nearest interpolation by s: a
    length not divisible by 1/s loses its last samples, as torch's), as a matrix.

    FOMM's 2-D kernel is the outer product of one 1-D kernel with itself, so the blur +
    subsampling of an image is A x A^T with A this matrix (row i holds `gaussian_taps`
    centred on pixel i/s). Exact here, rounded once to the compute dtype where it is used:
    the float64 step agrees with FOMM's float64 step when FOMM's kernel is exact too
    (docs/DESIGN_NOTES.md, "One training step against FOMM's").
    """
    taps = gaussian_taps(scale)
    step = int(round(1.0 / scale))
    half = len(taps) // 2  # odd kernel: centred
    matrix = np.zeros((int(np.floor(length * scale)), length), np.float64)
    for row in range(matrix.shape[0]):
        for tap, weight in enumerate(taps):
            column = row * step + tap - half
            if 0 <= column < length:
                matrix[row, column] = weight
    return matrix


class AntiAliasDownsample(nn.Module):
    """FOMM's AntiAliasInterpolation2d: depthwise Gaussian blur, then every (1/s)-th pixel.

    The kernel is a constant derived from `scale` (FOMM saves it as the buffer `down.weight`;
    the converter checks the checkpoint's copy against it).
    """

    scale: float

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [B, H, W, C] -> [B, H*s, W*s, C] (float32 in, float32 out)."""
        if self.scale == 1.0:
            return x
        # The Gaussian is separable: two small matmuls (rows, then columns) give the samples
        # of the strided depthwise convolution. XLA:CPU runs that convolution's gradient (a
        # 13x13 grouped convolution with input dilation, for the loss pyramid) as slowly as
        # VGG19's largest layer; see docs/DESIGN_NOTES.md, "Training-step profile".
        x = x.astype(jnp.float32)
        rows = jnp.asarray(antialias_matrix(x.shape[1], self.scale), x.dtype)
        columns = jnp.asarray(antialias_matrix(x.shape[2], self.scale), x.dtype)
        highest = jax.lax.Precision.HIGHEST
        x = jnp.einsum("ih,bhwc->biwc", rows, x, precision=highest)
        return jnp.einsum("jw,biwc->bijc", columns, x, precision=highest)


def _windows2x2(x: jax.Array) -> jax.Array:
    """[B, H, W, C] -> [B, H//2, 2, W//2, 2, C] (an odd last row or column dropped, as torch)."""
    batch, height, width, channels = x.shape
    height, width = height // 2 * 2, width // 2 * 2
    return x[:, :height, :width].reshape(batch, height // 2, 2, width // 2, 2, channels)


# The 2x2 pools are reductions over a reshape, not window reductions: their gradients are then
# a broadcast (mean) and a compare-select (max) that XLA fuses, where XLA:CPU runs the
# gradient of a window reduction as a padded reduce-window (mean) or a select-and-scatter
# expanded into a reduce-window over index tuples (max), several times slower
# (docs/DESIGN_NOTES.md, "Training-step profile").


def avg_pool2x2(x: jax.Array) -> jax.Array:
    """[B, H, W, C] -> [B, H//2, W//2, C], torch `F.avg_pool2d(x, 2)`; float32 sums."""
    return jnp.mean(_windows2x2(x), axis=(2, 4), dtype=jnp.float32).astype(x.dtype)


def _window_values(x: jax.Array) -> jax.Array:
    """[B, H, W, C] -> [B, H//2, W//2, 4, C]: each 2x2 window's values in row-major order."""
    windows = _windows2x2(x)
    batch, height, _, width, _, channels = windows.shape
    return windows.transpose(0, 1, 3, 2, 4, 5).reshape(batch, height, width, 4, channels)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _max_pool2x2(x: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    return jnp.max(_window_values(x), axis=3)


def _max_pool2x2_forward(x, shape):
    values = _window_values(x)
    # Where the window's maximum sits, the first in row-major order, as torch's max_pool2d
    # records it: one byte per output, where differentiating jnp.max keeps a float32
    # indicator per input (VGG19's pools at 256², batch 2: 82 MB live at vox-256's peak).
    first = jnp.argmax(values, axis=3).astype(jnp.int8)
    return jnp.max(values, axis=3), first


def _max_pool2x2_backward(shape, first, grad):
    batch, height, width, channels = grad.shape
    spread = jnp.stack([jnp.where(first == k, grad, 0) for k in range(4)], axis=3)
    spread = spread.reshape(batch, height, width, 2, 2, channels).transpose(0, 1, 3, 2, 4, 5)
    spread = spread.reshape(batch, 2 * height, 2 * width, channels)
    # an odd last row or column took no part: zero gradient
    return (
        jnp.pad(spread, ((0, 0), (0, shape[1] - 2 * height), (0, shape[2] - 2 * width), (0, 0))),
    )


_max_pool2x2.defvjp(_max_pool2x2_forward, _max_pool2x2_backward)


def max_pool2x2(x: jax.Array) -> jax.Array:
    """[B, H, W, C] -> [B, H//2, W//2, C], torch `F.max_pool2d(x, 2)`, gradient included: it
    goes to each window's first maximum (row-major) where the window holds it more than once."""
    return _max_pool2x2(x, x.shape)


# XLA:CPU (jaxlib 0.10.2) runs a 3x3 convolution on a 2x2 map with hundreds of channels ~30x
# slower than the same product as patches @ kernel (137 vs 5 ms at 16 x 2 x 2 x 512, 271 vs
# 15 ms with its gradient). FOMM's hourglasses (1024 channels at 2x2 in vox-256) and VGG19's
# small pyramid scales meet such maps; up to this many pixels `Conv` takes the matmul form.
SMALL_MAP_PIXELS = 4
# XLA computes a convolution's kernel gradient as a convolution whose window is the whole map,
# which XLA:CPU runs far below its forward rate on large maps and wide layers. The same
# gradient as GEMMs over bands of rows (`_kernel_gradient`), batch 2, CPU s, XLA vs bands
# (load ~3.5): 256x256, 3x3, 64 -> 128: 1.31 vs 0.23; 128 -> 64: 0.53 vs 0.26; 128x128,
# 256 -> 128: 0.35 vs 0.17; 7x7, 64 -> 3: 0.49 vs 0.11 (3 -> 64: 0.09 vs 0.11); 64x64,
# 256 -> 256: 0.117 vs 0.063; 32x32, 512 -> 256: 0.037 vs 0.028. Small gradients lose:
# 16x16, 256 -> 512 (1.2 GFLOP): 0.009 vs 0.015; FOMM tiny's 64x64 layers at batch 8
# (8 -> 16, 0.08 GFLOP): 0.001 vs 0.005. Kernel gradients of at least this many FLOPs
# (2 k^2 I O B H W) are the GEMMs (`conv_same`); the input gradient stays XLA's.
KERNEL_GRADIENT_GEMM_FLOPS = 2e9
# The patches one band of the kernel-gradient GEMM expands at a time (k*k times the band's
# rows of the narrower side). 8-16 MiB bands are equally fast, 128 MiB ones ~30% slower; at
# 256x256, 64 -> 128, 8 MiB bands take 43 MiB of temporaries (XLA's form: 96).
KERNEL_GRADIENT_BAND_BYTES = 8 * 2**20
_DIMENSIONS = ("NHWC", "HWIO", "NHWC")


def _windows(padded: jax.Array, k: int, height: int, width: int) -> list[jax.Array]:
    """The k*k shifted [B, height, width, C] windows of a map zero-padded by k // 2 (or of a
    band of its rows), (kh, kw) row-major: window (i, j) is what kernel tap (i, j) of a
    stride-1 'same' convolution multiplies."""
    return [padded[:, i : i + height, j : j + width] for i in range(k) for j in range(k)]


def _pad(x: jax.Array, k: int) -> jax.Array:
    return jnp.pad(x, ((0, 0), (k // 2, k // 2), (k // 2, k // 2), (0, 0)))


def _conv_xla(x: jax.Array, kernel: jax.Array) -> jax.Array:
    k = kernel.shape[0]
    padding = ((k // 2, k // 2),) * 2
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=_DIMENSIONS)


def _kernel_gradient(x: jax.Array, grad: jax.Array, k: int) -> jax.Array:
    """d(loss)/d(kernel) [k, k, I, O] of the 'same' convolution of x [B, H, W, I], given
    d(loss)/d(output) `grad` [B, H, W, O]: GEMMs contracting batch x pixels, one band of rows
    at a time (a loop, so that one band's patches are live at once), accumulated in float32.
    The side with fewer channels is expanded into its k*k windows (kernel tap (i, j) pairs x's
    window (i, j) with grad, i.e. x with grad's window (k-1-i, k-1-j)) as the GEMM's right
    operand, in its own layout; the other side is transposed."""
    inputs, outputs = x.shape[-1], grad.shape[-1]
    expanded, other = (x, grad) if inputs <= outputs else (grad, x)
    batch, height, width, channels = expanded.shape
    row_bytes = k * k * channels * batch * width * expanded.dtype.itemsize
    rows = height  # the largest divisor of the height whose band fits (at least one row)
    while rows > 1 and (height % rows or rows * row_bytes > KERNEL_GRADIENT_BAND_BYTES):
        rows -= 1
    padded = _pad(expanded, k)

    def add_band(band_index, total):
        band = jax.lax.dynamic_slice_in_dim(padded, band_index * rows, rows + k - 1, axis=1)
        windows = _windows(band, k, rows, width)
        patches = jnp.concatenate(windows if expanded is x else windows[::-1], axis=-1)
        rest = jax.lax.dynamic_slice_in_dim(other, band_index * rows, rows, axis=1)
        return total + jnp.matmul(
            rest.reshape(-1, other.shape[-1]).T,
            patches.reshape(-1, k * k * channels),
            preferred_element_type=jnp.float32,
        )

    zeros = jnp.zeros((other.shape[-1], k * k * channels), jnp.float32)
    total = jax.lax.fori_loop(0, height // rows, add_band, zeros).astype(x.dtype)
    if expanded is x:  # total: [O, (kh, kw, I)]
        return total.T.reshape(k, k, inputs, outputs)
    return total.reshape(inputs, k, k, outputs).transpose(1, 2, 0, 3)  # total: [I, (kh, kw, O)]


@jax.custom_vjp
def conv_same(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """The stride-1 'same' convolution of x [B, H, W, I] with kernel [k, k, I, O] (k odd),
    whose kernel gradient is GEMMs (see KERNEL_GRADIENT_GEMM_FLOPS); the input gradient is
    XLA's."""
    return _conv_xla(x, kernel)


def _conv_same_forward(x, kernel):
    return _conv_xla(x, kernel), (x, kernel)


def _conv_same_backward(residuals, grad):
    x, kernel = residuals
    (grad_x,) = jax.linear_transpose(lambda x: _conv_xla(x, kernel), x)(grad)
    return grad_x, _kernel_gradient(x, grad, kernel.shape[0])


conv_same.defvjp(_conv_same_forward, _conv_same_backward)

# A frozen network's convolutions (the perceptual loss's VGG) pass gradients to their inputs
# only. That input gradient is the convolution of the output gradient with the kernel rotated
# by 180 degrees, input and output channels swapped; derived from the kernel in the step, XLA
# materialises that kernel every step (FOMM tiny: 13 VGG19 kernels, 52 MB, ~100 of its ~980 ms
# of thunk time, and as many MB of temporaries). Prepared once by `with_input_gradient_kernels`
# in this variable collection, `Conv` reads it instead.
INPUT_GRADIENT_KERNELS = "input_gradient_kernels"


def input_gradient_kernel(kernel: jax.Array) -> jax.Array:
    """[k, k, I, O] -> [k, k, O, I]: the kernel whose 'same' convolution with d(loss)/d(output)
    is d(loss)/d(input)."""
    return jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)


def with_input_gradient_kernels(variables: dict) -> dict:
    """A frozen network's `variables` plus, in the `INPUT_GRADIENT_KERNELS` collection, every
    `Conv` kernel's `input_gradient_kernel` (computed here, once): the network's `Conv`s then
    treat their kernels as constants (gradient zero) and take their input gradient from them."""
    kernels = {
        path: input_gradient_kernel(value)
        for path, value in flatten_dict(variables["params"]).items()
        if path[-1] == "kernel" and value.ndim == 4
    }
    return {**variables, INPUT_GRADIENT_KERNELS: unflatten_dict(kernels)}


@jax.custom_vjp
def conv_frozen(x: jax.Array, kernel: jax.Array, gradient_kernel: jax.Array) -> jax.Array:
    """The stride-1 'same' convolution of x with a constant kernel: the input gradient is the
    convolution with `gradient_kernel` (= input_gradient_kernel(kernel)); the kernels' gradients
    are zero, as under stop_gradient."""
    return _conv_xla(x, kernel)


def _conv_frozen_forward(x, kernel, gradient_kernel):
    return _conv_xla(x, kernel), (kernel, gradient_kernel)


def _conv_frozen_backward(residuals, grad):
    kernel, gradient_kernel = residuals
    return _conv_xla(grad, gradient_kernel), jnp.zeros_like(kernel), jnp.zeros_like(gradient_kernel)


conv_frozen.defvjp(_conv_frozen_forward, _conv_frozen_backward)


class Conv(nn.Module):
    """nn.Conv(features, (k, k), stride 1, padding k // 2) with the same parameters ('kernel'
    [k, k, I, O], 'bias' [O] unless use_bias=False) and results, computed as patches @ kernel
    on tiny maps and with a GEMM kernel gradient where that gradient is large; a frozen
    network's (`with_input_gradient_kernels`) with its prepared input-gradient kernel."""

    features: int
    kernel_size: int = 3
    use_bias: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (k, k, x.shape[-1], self.features),
            self.param_dtype,
        )  # fmt: skip
        x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        batch, height, width, inputs = x.shape
        kernel_gradient_flops = 2 * k * k * inputs * self.features * batch * height * width
        frozen = self.has_variable(INPUT_GRADIENT_KERNELS, "kernel")
        if frozen:  # a constant, whichever form below computes the convolution
            kernel = jax.lax.stop_gradient(kernel)
        if height * width <= SMALL_MAP_PIXELS:
            # Patch features ordered (kh, kw, input channel), as the kernel's rows: the kernel
            # is used as stored (a reshape), not transposed in every step (9 MiB per 512x512
            # VGG19 kernel, and its gradient transposed back).
            patches = jnp.concatenate(_windows(_pad(x, k), k, height, width), axis=-1)
            y = patches @ kernel.reshape(-1, self.features)
        elif frozen:
            gradient_kernel = self.get_variable(INPUT_GRADIENT_KERNELS, "kernel")
            y = conv_frozen(x, kernel, gradient_kernel.astype(self.dtype))
        elif kernel_gradient_flops >= KERNEL_GRADIENT_GEMM_FLOPS:
            # On CPU only: measured on XLA:CPU alone, and its loop hides the gradient's FLOPs
            # from XLA's cost analysis (counted once per loop), which MFU and the pod plans
            # (train/plan.py, compiled for TPU from a CPU host) read on the other backends.
            y = jax.lax.platform_dependent(x, kernel, cpu=conv_same, default=_conv_xla)
        else:
            y = _conv_xla(x, kernel)
        if not self.use_bias:
            return y
        bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
        return y + bias.astype(self.dtype)


def conv_bn_relu(
    x: jax.Array, features: int, kernel_size: int, *, train: bool, dtype: Dtype, param_dtype: Dtype
) -> jax.Array:
    """conv ('conv') -> BN ('norm') -> ReLU, created inside the calling compact module so the
    parameter names are FOMM's `<block>.conv.*` / `<block>.norm.*`."""
    x = Conv(features, kernel_size, dtype=dtype, param_dtype=param_dtype, name="conv")(x)
    x = batch_norm(train, param_dtype, "norm")(x)
    return nn.relu(x).astype(dtype)


class BatchNorm(nn.Module):
    """torch's BatchNorm2d (eps 1e-5, momentum 0.1) over the last axis, statistics float32.

    Variables as flax's nn.BatchNorm (params scale, bias; batch_stats mean, var), so the
    converters map them to weight, bias, running_mean, running_var. The one difference from
    flax: in training, `var` is updated with the UNBIASED batch variance (x n / (n - 1), n the
    values per channel), as torch does; the batch is still normalised with the biased one.
    At FOMM's 2x2 bottleneck with a batch of 2, flax's update would be 7/8 of torch's.
    """

    use_running_average: bool
    momentum: float = 0.9  # flax's convention: new = momentum * old + (1 - momentum) * batch
    epsilon: float = 1e-5
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [..., C] any float dtype -> float32, same shape."""
        features = x.shape[-1]
        shape = (features,)
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, shape, jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, shape, jnp.float32)
        scale = self.param("scale", nn.initializers.ones, shape, self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, shape, self.param_dtype)
        x = x.astype(jnp.float32)
        if self.use_running_average:
            mean, var = ra_mean.value, ra_var.value
        else:
            axes = tuple(range(x.ndim - 1))
            mean = jnp.mean(x, axes)
            var = jnp.mean(jnp.square(x - mean), axes)  # biased: what normalises the batch
            if not self.is_initializing():
                count = x.size // features
                unbiased = var * (count / max(count - 1, 1))  # torch: running_var's update
                m = self.momentum
                ra_mean.value = m * ra_mean.value + (1 - m) * mean
                ra_var.value = m * ra_var.value + (1 - m) * unbiased
        mul = jax.lax.rsqrt(var + self.epsilon) * scale.astype(jnp.float32)
        return (x - mean) * mul + bias.astype(jnp.float32)


def batch_norm(train: bool, param_dtype: Dtype, name: str) -> BatchNorm:
    """torch BatchNorm2d in train (batch statistics, torch's running-stat updates) or
    inference mode; statistics stay float32."""
    return BatchNorm(use_running_average=not train, param_dtype=param_dtype, name=name)


class SameBlock(nn.Module):
    """conv -> BN -> ReLU at constant resolution (FOMM SameBlock2d)."""

    features: int
    kernel_size: int = 3
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        return conv_bn_relu(
            x,
            self.features,
            self.kernel_size,
            train=train,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )


class DownBlock(nn.Module):
    """conv3x3 -> BN -> ReLU -> AvgPool2 (FOMM DownBlock2d)."""

    features: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        x = conv_bn_relu(
            x, self.features, 3, train=train, dtype=self.dtype, param_dtype=self.param_dtype
        )
        return avg_pool2x2(x)


class UpBlock(nn.Module):
    """nearest x2 -> conv3x3 -> BN -> ReLU (FOMM UpBlock2d)."""

    features: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        return conv_bn_relu(
            upsample_nearest2x(x),
            self.features,
            3,
            train=train,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )


class ResBlock(nn.Module):
    """Pre-activation residual block: x + conv2(relu(bn2(conv1(relu(bn1(x)))))) (FOMM)."""

    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        features = x.shape[-1]
        conv = lambda name: Conv(
            features, dtype=self.dtype, param_dtype=self.param_dtype, name=name
        )
        out = nn.relu(batch_norm(train, self.param_dtype, "norm1")(x)).astype(self.dtype)
        out = conv("conv1")(out)
        out = nn.relu(batch_norm(train, self.param_dtype, "norm2")(out)).astype(self.dtype)
        out = conv("conv2")(out)
        return (x + out).astype(self.dtype)


class CBAM(nn.Module):
    """Convolutional Block Attention Module (Woo et al. 2018): channel then spatial attention.

    Channel: a shared MLP (C -> C/r -> C) on the average- and max-pooled features, summed,
    sigmoid. Spatial: a 7x7 conv on the channel-wise average and max, sigmoid. The attention
    maps are computed in float32.
    """

    reduction: int = 16
    spatial_kernel: int = 7
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [B, H, W, C] -> [B, H, W, C], same dtype."""
        channels = x.shape[-1]
        hidden = max(1, channels // self.reduction)
        fc1 = nn.Dense(hidden, dtype=self.dtype, param_dtype=self.param_dtype, name="fc1")
        fc2 = nn.Dense(channels, dtype=self.dtype, param_dtype=self.param_dtype, name="fc2")
        mlp = lambda v: fc2(nn.relu(fc1(v))).astype(jnp.float32)
        pooled_avg = jnp.mean(x, axis=(1, 2), dtype=jnp.float32)
        pooled_max = jnp.max(x, axis=(1, 2)).astype(jnp.float32)
        channel_gate = nn.sigmoid(mlp(pooled_avg) + mlp(pooled_max))[:, None, None, :]
        x = (x * channel_gate).astype(self.dtype)

        stats = jnp.stack(
            [jnp.mean(x, -1, dtype=jnp.float32), jnp.max(x, -1).astype(jnp.float32)], axis=-1
        )
        pad = self.spatial_kernel // 2
        spatial = nn.Conv(
            1,
            (self.spatial_kernel,) * 2,
            padding=((pad, pad), (pad, pad)),
            dtype=jnp.float32,
            param_dtype=self.param_dtype,
            name="spatial",
        )(stats)
        return (x * nn.sigmoid(spatial)).astype(self.dtype)


def _level_features(block_expansion: int, max_features: int, level: int) -> int:
    return min(max_features, block_expansion * (2**level))


class Encoder(nn.Module):
    """FOMM's hourglass encoder: returns [x, e_1, ..., e_n] (input first, coarsest last)."""

    block_expansion: int
    num_blocks: int
    max_features: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> list[jax.Array]:
        outs = [x]
        for i in range(self.num_blocks):
            features = _level_features(self.block_expansion, self.max_features, i + 1)
            outs.append(
                DownBlock(features, self.dtype, self.param_dtype, name=f"down_blocks_{i}")(
                    outs[-1], train=train
                )
            )
        return outs


class Decoder(nn.Module):
    """FOMM's hourglass decoder; skip connections optionally pass through CBAM (MaskRenderer).

    Returns every level's output, coarsest first; the last one ([B, H, W,
    block_expansion + C_in]) is FOMM's hourglass output.
    """

    block_expansion: int
    num_blocks: int
    max_features: int
    attention: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, skips: Sequence[jax.Array], *, train: bool) -> list[jax.Array]:
        skips = list(skips)
        out = skips.pop()
        outs = []
        for i, level in enumerate(reversed(range(self.num_blocks))):
            features = _level_features(self.block_expansion, self.max_features, level)
            out = UpBlock(features, self.dtype, self.param_dtype, name=f"up_blocks_{i}")(
                out, train=train
            )
            skip = skips.pop()
            # The input itself (level 0) has no attention: images/heatmaps, not features.
            if self.attention and level > 0:
                skip = CBAM(dtype=self.dtype, param_dtype=self.param_dtype, name=f"attention_{i}")(
                    skip
                )
            out = jnp.concatenate([out, skip.astype(out.dtype)], axis=-1)
            outs.append(out)
        return outs


class Hourglass(nn.Module):
    """U-Net of FOMM (encoder/decoder names as the PyTorch reference), CBAM skips optional."""

    block_expansion: int
    num_blocks: int
    max_features: int
    attention: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> list[jax.Array]:
        """x: [B, H, W, C_in] (H, W divisible by 2^num_blocks).

        Returns:
          decoder outputs, coarsest first: level j has resolution H / 2^(num_blocks-1-j); the
          last is [B, H, W, block_expansion + C_in].
        """
        skips = Encoder(
            self.block_expansion,
            self.num_blocks,
            self.max_features,
            self.dtype,
            self.param_dtype,
            name="encoder",
        )(x, train=train)
        return Decoder(
            self.block_expansion,
            self.num_blocks,
            self.max_features,
            self.attention,
            self.dtype,
            self.param_dtype,
            name="decoder",
        )(skips, train=train)
