"""face-alignment's 2DFAN4 (Bulat & Tzimiropoulos 2017): 68 2D facial landmarks, as FOMM's
pose-evaluation runs it for AKD.

The network is 1adrianb/face-alignment's `FAN(num_modules=4)` (face_alignment/models.py, later
models/fan.py): a stride-4 stem, then four stacked hourglasses, each emitting 68 heatmaps on a
64x64 grid for a 256x256 crop. Submodules carry the PyTorch attribute names (`conv1`, `bn1`,
`conv2` .. `conv4`, `m{i}/b1_{level}`, `top_m_{i}`, `conv_last{i}`, `bn_end{i}`, `l{i}`,
`bl{i}`, `al{i}`, a ConvBlock's `downsample_0` BN and `downsample_2` conv), so
converters/torch_layout.py maps them to the released state dict mechanically. Both poolings
(after `conv2`, and into every hourglass level) are 2x2 average pools: face-alignment's first
commits used max pooling, but the released PyTorch weights run with average pooling (the
code since 2018; face-alignment issue #69 notes the Lua original differed). BatchNorm is
always in inference mode (running statistics, eps 1e-5): the network is frozen.

Landmarks follow face-alignment's `get_preds_fromhm` and `FaceAlignment.get_landmarks` (>= 1.2,
unchanged since): see `landmarks_from_heatmaps`, `crop_for_fan` and `to_image_coords`.

Without converted weights (`python -m converters.fan`), `init_random` gives a randomly
initialised network whose landmarks mean nothing: callers must say so with
`warn_random_weights`.
"""

from functools import partial
from typing import Any, NamedTuple

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from maskrenderer_jax.models.layers import batch_norm
from maskrenderer_jax.nets import random_weights

Dtype = Any

NUM_LANDMARKS = 68
INPUT_SIZE = 256  # face-alignment's crop
HEATMAP_STRIDE = 4  # input pixels per heatmap cell: api.py multiplies the 64-grid points by 4
HOURGLASS_DEPTH = 4
FEATURES = 256
REFERENCE_SCALE = 195.0  # the SFD detector's `reference_scale` (face size per unit `scale`)


def _avg_pool2(x: jax.Array) -> jax.Array:
    return nn.avg_pool(x, (2, 2), strides=(2, 2), padding="VALID")


def _upsample_nearest2(x: jax.Array) -> jax.Array:
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class ConvBlock(nn.Module):
    """face-alignment's ConvBlock: three pre-activation 3x3 convs (out/2, out/4, out/4
    channels, no bias), their outputs concatenated, plus the input (through BN-ReLU-1x1 conv
    `downsample` when the channel count changes)."""

    features: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = partial(
            nn.Conv,
            kernel_size=(3, 3),
            padding=((1, 1), (1, 1)),
            use_bias=False,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        bn = partial(batch_norm, False, self.param_dtype)
        out1 = conv(self.features // 2, name="conv1")(nn.relu(bn("bn1")(x)))
        out2 = conv(self.features // 4, name="conv2")(nn.relu(bn("bn2")(out1)))
        out3 = conv(self.features // 4, name="conv3")(nn.relu(bn("bn3")(out2)))
        residual = x
        if x.shape[-1] != self.features:
            # nn.Sequential(BatchNorm2d, ReLU, Conv2d 1x1 no bias): indices 0 and 2.
            residual = nn.Conv(
                self.features,
                (1, 1),
                padding="VALID",
                use_bias=False,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name="downsample_2",
            )(nn.relu(bn("downsample_0")(x)))
        return jnp.concatenate([out1, out2, out3], axis=-1).astype(self.dtype) + residual


class HourGlass(nn.Module):
    """face-alignment's HourGlass(1, depth, features): at each level, `b1_{level}` on the input
    plus the nearest x2 upsampling of `b3_{level}` of the lower branch (2x2 average pool,
    `b2_{level}`, the next level, or `b2_plus_1` at the bottom)."""

    depth: int = HOURGLASS_DEPTH
    features: int = FEATURES
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        def block(name):
            return ConvBlock(
                self.features, dtype=self.dtype, param_dtype=self.param_dtype, name=name
            )

        def level(n, inp):
            up1 = block(f"b1_{n}")(inp)
            low1 = block(f"b2_{n}")(_avg_pool2(inp))
            low2 = level(n - 1, low1) if n > 1 else block(f"b2_plus_{n}")(low1)
            low3 = block(f"b3_{n}")(low2)
            return up1 + _upsample_nearest2(low3)

        return level(self.depth, x)


class FAN(nn.Module):
    """face-alignment's FAN: 68 landmark heatmaps of a face crop (2DFAN4: num_modules=4)."""

    num_modules: int = 4
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        """Heatmaps of the last hourglass module.

        Args:
          images: [B, H, W, 3] float32 RGB in [0, 1] (face-alignment feeds its 256x256 uint8
            crop divided by 255, no other normalisation); H, W multiples of 64.
        Returns:
          [B, H / 4, W / 4, 68] float32 heatmaps ([B, 64, 64, 68] for 256x256 crops).
        """
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        bn = partial(batch_norm, False, self.param_dtype)

        def conv1x1(features, name):
            return nn.Conv(features, (1, 1), padding="VALID", name=name, **kw)

        x = images.astype(self.dtype)
        x = nn.Conv(64, (7, 7), strides=(2, 2), padding=((3, 3), (3, 3)), name="conv1", **kw)(x)
        x = nn.relu(bn("bn1")(x)).astype(self.dtype)
        x = _avg_pool2(ConvBlock(128, name="conv2", **kw)(x))
        x = ConvBlock(128, name="conv3", **kw)(x)
        previous = ConvBlock(FEATURES, name="conv4", **kw)(x)
        for i in range(self.num_modules):
            hg = HourGlass(name=f"m{i}", **kw)(previous)
            ll = ConvBlock(FEATURES, name=f"top_m_{i}", **kw)(hg)
            ll = nn.relu(bn(f"bn_end{i}")(conv1x1(FEATURES, f"conv_last{i}")(ll)))
            heatmaps = conv1x1(NUM_LANDMARKS, f"l{i}")(ll.astype(self.dtype))
            if i < self.num_modules - 1:
                # The next module sees the input, the features and the heatmaps remapped.
                previous = (
                    previous
                    + conv1x1(FEATURES, f"bl{i}")(ll.astype(self.dtype))
                    + conv1x1(FEATURES, f"al{i}")(heatmaps)
                )
        return heatmaps.astype(jnp.float32)


def landmarks_from_heatmaps(heatmaps: jax.Array) -> jax.Array:
    """face-alignment's `get_preds_fromhm`, times 4: landmark (x, y) in input pixels.

    Per heatmap: the argmax cell (row r, column c; the first one on ties, as np.argmax), then,
    only if the cell is not on the border (0 < c < W - 1 and 0 < r < H - 1; the reference
    hard-codes 63, i.e. FAN's 64x64 maps), a quarter cell towards the larger neighbour along
    each axis: + 0.25 * sign(hm[r, c + 1] - hm[r, c - 1]) for x and likewise for y (sign 0 on
    equal neighbours). The reference counts cells from 1 (c + 1) and subtracts 0.5, so a cell
    maps to its centre c + 0.5 in grid units; `FaceAlignment.get_landmarks` multiplies by 4.

    Convention of the result: input pixels with the origin at the top-left *corner* of the
    top-left pixel (pixel i spans [i, i + 1), its centre is i + 0.5). Heatmap cell (r, c)
    covers the input's 4x4 block [4c, 4c + 4) x [4r, 4r + 4), so an unrefined argmax gives
    (4c + 2, 4r + 2), the block's centre, and the refinement moves it by +/-1 px.

    Args:
      heatmaps: [B, H, W, K] float32 (FAN's [B, 64, 64, 68]).
    Returns:
      [B, K, 2] float32 (x, y): multiples of 1 in (0, 4W) x (0, 4H).
    """
    _, h, w, _ = heatmaps.shape
    flat = einops.rearrange(heatmaps.astype(jnp.float32), "b h w k -> b k (h w)")
    idx = jnp.argmax(flat, axis=-1)
    row, col = idx // w, idx % w

    def at(offset):
        i = jnp.clip(idx + offset, 0, h * w - 1)  # clipped reads are masked out below
        return jnp.take_along_axis(flat, i[..., None], axis=-1)[..., 0]

    interior = (col > 0) & (col < w - 1) & (row > 0) & (row < h - 1)
    diff = jnp.stack([at(1) - at(-1), at(w) - at(-w)], axis=-1)
    refine = jnp.where(interior[..., None], 0.25 * jnp.sign(diff), 0.0)
    # 1-based cell + refinement - 0.5 (all exact in float32), in grid units, then pixels.
    cells = jnp.stack([col, row], axis=-1).astype(jnp.float32) + 1.0
    return (cells + refine - 0.5) * HEATMAP_STRIDE


@jax.jit  # module level: one compile per input shape and num_modules for the whole process
def heatmaps_and_landmarks(variables: dict, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    """FAN on 256x256 crops -> (heatmaps [B, 64, 64, 68], landmarks [B, 68, 2] (x, y) in crop
    pixels, `landmarks_from_heatmaps`' convention). The number of hourglass modules is read
    from `variables` (FAN(4) for the released 2DFAN4)."""
    heatmaps = FAN(num_modules=num_modules_of(variables)).apply(variables, images)
    return heatmaps, landmarks_from_heatmaps(heatmaps)


def num_modules_of(variables: dict) -> int:
    """The hourglass count of FAN variables: their `m0`, `m1`, ... submodules."""
    return sum(1 for name in variables["params"] if name[0] == "m" and name[1:].isdigit())


# ---------------------------------------------------------------------------- face crops


class FanTransform(NamedTuple):
    """face-alignment's crop parameters: the face centre (x, y) in image pixels and `scale`
    (the crop is 200 * scale image pixels wide)."""

    center: np.ndarray  # [2] float64
    scale: float


def fan_transform(box, reference_scale: float = REFERENCE_SCALE) -> FanTransform:
    """face-alignment's centre and scale of a detected face box (x1, y1, x2, y2[, score]).

    As `FaceAlignment.get_landmarks_from_image`: the box centre moved up by 12% of the box
    height, scale = (width + height) / reference_scale (195 for its default SFD detector).
    """
    x1, y1, x2, y2 = (float(v) for v in np.asarray(box, np.float64)[:4])
    center = np.array([x2 - (x2 - x1) / 2.0, y2 - (y2 - y1) / 2.0])
    center[1] -= (y2 - y1) * 0.12
    return FanTransform(center, (x2 - x1 + y2 - y1) / reference_scale)


def _crop_to_image(transform: FanTransform, resolution: float) -> np.ndarray:
    """face-alignment's `transform(..., invert=True)` matrix: crop pixels -> image pixels."""
    h = 200.0 * transform.scale
    t = np.eye(3)
    t[0, 0] = t[1, 1] = resolution / h
    t[0, 2] = resolution * (-transform.center[0] / h + 0.5)
    t[1, 2] = resolution * (-transform.center[1] / h + 0.5)
    return np.linalg.pinv(t)  # as transform_np (numba); the crop's torch version inverts


def crop_for_fan(
    image: np.ndarray, box, *, reference_scale: float = REFERENCE_SCALE
) -> tuple[np.ndarray, FanTransform]:
    """face-alignment's 256x256 crop of the face in `box` (host side, numpy).

    As `utils.crop(image, center, scale)`: the corners are the crop's 1-based pixels (1, 1) and
    (256, 256) mapped to the image and truncated to int (ul, br); image pixels
    [ul, br) (0-based, zero outside the image) are copied into a uint8 canvas, which is resized
    to 256x256 with cv2's INTER_LINEAR geometry (half-pixel centres, edge pixels repeated).
    The reference does this in float32 torch and with cv2's fixed-point uint8 arithmetic; this
    function computes in float64 and rounds once, so a crop pixel may differ by 1/255 and a
    corner that falls within float32 rounding of an integer may move by one pixel.

    Args:
      image: [H, W, 3] RGB, uint8 (as face-alignment reads frames) or float in [0, 1]
        (quantised to uint8 first, round(255 x), as a frame saved to PNG).
      box: (x1, y1, x2, y2[, score]) in image pixels, e.g. a face detector's output.
    Returns:
      (crop [256, 256, 3] float32 in [0, 1], FanTransform for `to_image_coords`).
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image must be [H, W, 3] RGB; got {image.shape}")
    if image.dtype != np.uint8:
        image = np.round(np.clip(image.astype(np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)
    transform = fan_transform(box, reference_scale)
    inverse = _crop_to_image(transform, INPUT_SIZE)
    ul = (inverse @ np.array([1.0, 1.0, 1.0]))[:2].astype(np.int64)
    br = (inverse @ np.array([INPUT_SIZE, INPUT_SIZE, 1.0]))[:2].astype(np.int64)
    height, width = image.shape[:2]
    canvas = np.zeros((br[1] - ul[1], br[0] - ul[0], 3), np.uint8)
    y0, y1 = max(ul[1], 0), min(br[1], height)
    x0, x1 = max(ul[0], 0), min(br[0], width)
    if y1 > y0 and x1 > x0:
        canvas[y0 - ul[1] : y1 - ul[1], x0 - ul[0] : x1 - ul[0]] = image[y0:y1, x0:x1]
    crop = _resize_linear(canvas, INPUT_SIZE)
    return (np.round(crop).astype(np.uint8) / np.float32(255.0)).astype(np.float32), transform


def _resize_linear(image: np.ndarray, size: int) -> np.ndarray:
    """cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR) in float64."""

    def axis(n_in):
        src = (np.arange(size) + 0.5) * (n_in / size) - 0.5
        lo = np.floor(src).astype(np.int64)
        frac = src - lo
        # cv2: left of the first centre or right of the last, the edge pixel alone.
        frac = np.where(lo < 0, 0.0, np.where(lo >= n_in - 1, 0.0, frac))
        lo = np.clip(lo, 0, n_in - 1)
        return lo, np.minimum(lo + 1, n_in - 1), frac

    img = image.astype(np.float64)
    y0, y1, fy = axis(img.shape[0])
    x0, x1, fx = axis(img.shape[1])
    rows = img[y0] * (1.0 - fy)[:, None, None] + img[y1] * fy[:, None, None]
    return rows[:, x0] * (1.0 - fx)[None, :, None] + rows[:, x1] * fx[None, :, None]


def to_image_coords(
    points: np.ndarray, transform: FanTransform, *, truncate: bool = True
) -> np.ndarray:
    """Crop landmarks (`landmarks_from_heatmaps`) -> the original image's pixels.

    As `get_preds_fromhm(hm, center, scale)`: the 64-grid point (x / 4) goes through
    `transform_np(..., 64, invert=True)`, i.e. x_img = x / 4 * (200 scale) / 64 + center -
    100 scale, which face-alignment truncates toward zero to int32 (`truncate=False` keeps the
    fraction). Those integers are what `FaceAlignment.get_landmarks` returns and what FOMM's
    AKD compares.

    Args:
      points: [..., 2] (x, y) in 256x256-crop pixels.
    Returns:
      [..., 2] float32 (x, y) in image pixels.
    """
    points = np.asarray(points, np.float64) / HEATMAP_STRIDE
    inverse = _crop_to_image(transform, INPUT_SIZE // HEATMAP_STRIDE)
    out = points @ inverse[:2, :2].T + inverse[:2, 2]
    return (np.trunc(out) if truncate else out).astype(np.float32)


# ------------------------------------------------------------------------ random weights


def init_random(rng: jax.Array, *, num_modules: int = 4, param_dtype: Dtype = jnp.float32) -> dict:
    """Randomly initialised {'params', 'batch_stats'} for `FAN(num_modules).apply`, distributed
    as flax's defaults (kernels lecun_normal, biases 0, BatchNorm scale 1, bias 0, mean 0,
    var 1).

    Not through `FAN.init` (~500 per-leaf initialisers, ~25 s to compile on two CPU cores):
    `random_weights.flax_default_variables`. Only for running without converted weights:
    call `warn_random_weights` alongside.
    """
    model = FAN(num_modules=num_modules, param_dtype=param_dtype)
    abstract = jax.eval_shape(model.init, rng, jnp.zeros((1, 64, 64, 3), jnp.float32))
    return random_weights.flax_default_variables(abstract, rng)


def warn_random_weights() -> str:
    """Logs (logging.WARNING) and returns the message that FAN runs on random weights."""
    return random_weights.warn_random_weights(
        "2DFAN4",
        "converters.fan",
        "its landmarks are meaningless and AKD is not comparable to FOMM/MaskRenderer.",
    )
