"""ResNet-50 (Bottleneck blocks [3, 4, 6, 3]) with torchvision's state-dict names.

Two layouts of the same network:
- `caffe=False`: torchvision's ResNet v1.5 (the stride of a downsampling block sits on its 3x3
  conv; stem MaxPool2d(3, 2, padding=1)). Deep3DFace's regressor backbone.
- `caffe=True`: the original Caffe ResNet-50 that VGGFace2's resnet50_ft was trained as (the
  stride sits on the block's first 1x1 conv; stem MaxPool2d(3, 2, padding=0, ceil_mode=True)).

Submodules are named as the PyTorch attributes (`conv1`, `bn1`, `layer1_0/conv1`,
`layer2_0/downsample_0` = the projection conv, `downsample_1` = its BatchNorm), so
converters/torch_layout.py maps `layer1_0` -> `layer1.0` mechanically. All padding is explicit
and zero, as torch's; max-pool padding is -inf, as torch's.

Inputs are whatever the trained network expects (Deep3DFace: RGB in [0, 1], no
normalisation; VGGFace2: BGR 0-255 minus the mean): normalisation belongs to the caller.
"""

from collections.abc import Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from maskrenderer_jax.models.layers import Conv, batch_norm

Dtype = Any
EXPANSION = 4  # Bottleneck output channels = 4 x its width
FEATURES = 512 * EXPANSION  # the pooled feature of ResNet-50: 2048


def max_pool_3x3_s2(x: jax.Array, *, ceil_mode: bool) -> jax.Array:
    """torch MaxPool2d(3, 2): padding=1 (torchvision) or padding=0 with ceil_mode (Caffe).

    ceil_mode adds windows that hang over the bottom/right edge; torch drops a window only if it
    would start in the padding, which never happens with padding 0, so the extra row/column is
    always kept. Padding reads -inf (flax pads with the reduction's identity), as torch.
    """
    if not ceil_mode:
        return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    pads = []
    for size in x.shape[1:3]:
        out = -(-(size - 3) // 2) + 1  # ceil((size - 3) / 2) + 1
        pads.append((0, (out - 1) * 2 + 3 - size))
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding=pads)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 residual block (torchvision/VGGFace2 `Bottleneck`).

    Attributes:
      width: channels of the 1x1/3x3 convs; the block outputs 4 x width.
      strides: 1 or 2 (the first block of layers 2-4).
      downsample: add the projection shortcut (`downsample.0` conv, `downsample.1` BN).
      caffe: put the stride on conv1 (1x1) instead of conv2 (3x3).
    """

    width: int
    strides: int = 1
    downsample: bool = False
    caffe: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        conv = partial(nn.Conv, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype)
        bn = partial(batch_norm, train, self.param_dtype)
        s1, s2 = (self.strides, 1) if self.caffe else (1, self.strides)
        out = conv(self.width, (1, 1), strides=s1, padding="VALID", name="conv1")(x)
        out = nn.relu(bn("bn1")(out))
        if s2 == 1:  # layers.Conv: the tiny-map form (VGGFace2's layer4 at 2x2 on 64 px input)
            conv2 = Conv(self.width, 3, use_bias=False, dtype=self.dtype,
                         param_dtype=self.param_dtype, name="conv2")  # fmt: skip
        else:
            conv2 = conv(self.width, (3, 3), strides=s2, padding=((1, 1), (1, 1)), name="conv2")
        out = conv2(out)
        out = nn.relu(bn("bn2")(out))
        out = conv(self.width * EXPANSION, (1, 1), padding="VALID", name="conv3")(out)
        out = bn("bn3")(out)
        if self.downsample:
            shortcut = conv(
                self.width * EXPANSION,
                (1, 1),
                strides=self.strides,
                padding="VALID",
                name="downsample_0",
            )(x)
            x = bn("downsample_1")(shortcut)
        return nn.relu(out + x)


class ResNet50(nn.Module):
    """ResNet-50 trunk, no classifier: conv1/bn1/maxpool, layer1..layer4, global average pool.

    Attributes:
      caffe: VGGFace2's Caffe layout (see the module docstring) instead of torchvision's.
      stage_sizes: blocks per stage; (3, 4, 6, 3) is ResNet-50.
    """

    caffe: bool = False
    stage_sizes: Sequence[int] = (3, 4, 6, 3)
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, x: jax.Array, *, train: bool, return_stages: bool = False
    ) -> jax.Array | dict[str, jax.Array]:
        """Pooled features of an image batch.

        Args:
          x: [B, H, W, 3] normalised as the trained network expects; any H, W (layer4 is about
            H/32 x W/32), 224 for the published weights.
          train: batch statistics (and running-average updates: pass mutable=['batch_stats'])
            instead of the running averages.
          return_stages: also return every stage's output.
        Returns:
          [B, 2048] float32, the spatial mean of layer4 (torch AdaptiveAvgPool2d(1); equal to
          VGGFace2's AvgPool2d(7) at 224 input, where layer4 is 7x7). With return_stages,
          {'stem': [B, H/4, W/4, 64], 'layer1'..'layer4': [B, H/4..H/32, ., 256..2048],
          'pooled': [B, 2048]} (sizes rounded as torch rounds them).
        """
        stages = {}
        x = nn.Conv(
            64,
            (7, 7),
            strides=2,
            padding=((3, 3), (3, 3)),
            use_bias=False,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="conv1",
        )(x)
        x = nn.relu(batch_norm(train, self.param_dtype, "bn1")(x))
        x = stages["stem"] = max_pool_3x3_s2(x, ceil_mode=self.caffe)
        in_channels = 64
        for i, blocks in enumerate(self.stage_sizes):
            width = 64 * 2**i
            for j in range(blocks):
                strides = 2 if i > 0 and j == 0 else 1
                x = Bottleneck(
                    width,
                    strides=strides,
                    # torchvision adds the projection where the shape changes: first blocks.
                    downsample=j == 0 and (strides != 1 or in_channels != width * EXPANSION),
                    caffe=self.caffe,
                    dtype=self.dtype,
                    param_dtype=self.param_dtype,
                    name=f"layer{i + 1}_{j}",
                )(x, train=train)
                in_channels = width * EXPANSION
            stages[f"layer{i + 1}"] = x
        pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        if return_stages:
            return {**stages, "pooled": pooled}
        return pooled
