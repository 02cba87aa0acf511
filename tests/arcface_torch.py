"""PyTorch reference for nets/arcface.py, written from insightface's published architecture
(recognition/arcface_torch/backbones/iresnet.py) with its state-dict names.

- `IResNet(layers)`: conv1 3x3 / bn1 / prelu, layer1..4 of `IBasicBlock` (stride 2 first
  blocks with a conv1x1 + BatchNorm `downsample`), bn2, dropout, flatten (NCHW), fc, and the
  BatchNorm1d `features`. Every BatchNorm has eps 1e-05, momentum torch's default.
  `layers=(3, 4, 14, 3)` is iresnet50, `(3, 13, 30, 3)` iresnet100.
- `reference_input`: inference.py's preprocessing of an RGB image (img / 255 - 0.5) / 0.5.
"""

import numpy as np
import torch
from torch import nn


def conv3x3(in_planes, out_planes, stride=1):
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-05)
        self.conv1 = conv3x3(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-05)
        self.prelu = nn.PReLU(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-05)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        identity = x
        out = self.bn1(x)
        out = self.conv1(out)
        out = self.bn2(out)
        out = self.prelu(out)
        out = self.conv2(out)
        out = self.bn3(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        return out + identity


class IResNet(nn.Module):
    fc_scale = 7 * 7

    def __init__(self, layers=(3, 4, 14, 3), dropout=0.0, num_features=512):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-05)
        self.prelu = nn.PReLU(64)
        self.layer1 = self._make_layer(64, layers[0], stride=2)
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=2)
        self.layer4 = self._make_layer(512, layers[3], stride=2)
        self.bn2 = nn.BatchNorm2d(512, eps=1e-05)
        self.dropout = nn.Dropout(p=dropout, inplace=True)
        self.fc = nn.Linear(512 * self.fc_scale, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-05)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False

    def _make_layer(self, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes, eps=1e-05),
            )
        layers = [IBasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [IBasicBlock(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        x = self.bn2(x)
        x = torch.flatten(x, 1)
        x = self.dropout(x)
        x = self.fc(x)
        return self.features(x)


def reference_input(images_uint8: np.ndarray) -> torch.Tensor:
    """inference.py for RGB uint8 images [B, 112, 112, 3]: NCHW float, div 255, -0.5, /0.5."""
    img = torch.from_numpy(np.ascontiguousarray(images_uint8.transpose(0, 3, 1, 2))).float()
    return img.div_(255).sub_(0.5).div_(0.5)


@torch.no_grad()
def randomize_(module: IResNet, seed: int, calibration_batch: int = 8) -> IResNet:
    """Random weights that keep activations O(1) to the embedding; returns it in eval mode.

    Convs and fc: He normal. PReLU slopes: uniform in [0, 0.5] per channel. BatchNorms: random
    affine (bn3 of every block small, 0.1-0.3, so the residual stream grows slowly; `features`
    keeps its frozen weight 1 and gets a random bias), running statistics measured on a random
    batch of inputs in [-1, 1] (one train-mode pass with momentum 1), then perturbed, so that
    inference BN neither explodes nor is an exact whitening.
    """
    gen = torch.Generator().manual_seed(seed)

    def normal(shape, std):
        return torch.randn(shape, generator=gen) * std

    def uniform(shape, lo, hi):
        return lo + (hi - lo) * torch.rand(shape, generator=gen)

    last_bns = {id(m.bn3) for m in module.modules() if isinstance(m, IBasicBlock)}
    bns = []
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            fan_in = m.weight[0].numel()
            m.weight.copy_(normal(m.weight.shape, (2.0 / fan_in) ** 0.5))
            if m.bias is not None:
                m.bias.copy_(normal(m.bias.shape, 0.1))
        elif isinstance(m, nn.PReLU):
            m.weight.copy_(uniform(m.weight.shape, 0.0, 0.5))
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            if m is not module.features:  # the reference freezes features.weight at 1
                lo, hi = (0.1, 0.3) if id(m) in last_bns else (0.5, 1.5)
                m.weight.copy_(uniform(m.weight.shape, lo, hi))
            m.bias.copy_(normal(m.bias.shape, 0.2))
            m.reset_running_stats()
            m.momentum = 1.0
            bns.append(m)
    module.train()
    module(uniform((calibration_batch, 3, 112, 112), -1.0, 1.0))
    for m in bns:
        m.momentum = 0.1
        std = m.running_var.sqrt()
        m.running_mean.add_(0.1 * std * normal(std.shape, 1.0))
        m.running_var.mul_(uniform(std.shape, 0.7, 1.3))
    return module.eval()
