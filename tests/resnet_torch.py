"""PyTorch references for nets/resnet.py and face3d/recon_net.py, written from the published
architectures with their state-dict names (torchvision is not installed beside this torch).

- `ResNet(caffe=False)`: torchvision's resnet50 (v1.5: stride on the Bottleneck's 3x3 conv,
  MaxPool2d(3, 2, padding=1), AdaptiveAvgPool2d(1)), without fc, as Deep3DFace builds it.
- `ResNet(caffe=True)`: VGGFace2-pytorch's resnet50 (stride on the first 1x1 conv,
  MaxPool2d(3, 2, padding=0, ceil_mode=True), AvgPool2d(7, stride=1)), include_top=False.
- `ReconNetWrapper`: Deep3DFace's models/networks.py ReconNetWrapper('resnet50').
"""

import torch
from torch import nn


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, caffe=False):
        super().__init__()
        s1, s2 = (stride, 1) if caffe else (1, stride)
        self.conv1 = nn.Conv2d(inplanes, planes, 1, stride=s1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=s2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


class ResNet(nn.Module):
    def __init__(self, layers=(3, 4, 6, 3), caffe=False):
        super().__init__()
        self.inplanes = 64
        self.caffe = caffe
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        if caffe:
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=0, ceil_mode=True)
            self.avgpool = nn.AvgPool2d(7, stride=1)
        else:
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=2)
        self.layer4 = self._make_layer(512, layers[3], stride=2)

    def _make_layer(self, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * 4:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * 4, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * 4),
            )
        layers = [Bottleneck(self.inplanes, planes, stride, downsample, self.caffe)]
        self.inplanes = planes * 4
        layers += [Bottleneck(self.inplanes, planes, caffe=self.caffe) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def stages(self, x):
        """{'stem', 'layer1'..'layer4'} NCHW, without the final pooling (any input size)."""
        out = {"stem": self.maxpool(self.relu(self.bn1(self.conv1(x))))}
        x = out["stem"]
        for name in ("layer1", "layer2", "layer3", "layer4"):
            x = out[name] = getattr(self, name)(x)
        return out

    def forward(self, x):
        return self.avgpool(self.stages(x)["layer4"])  # [B, 2048, 1, 1] at 224 input


class ReconNetWrapper(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = ResNet()
        self.final_layers = nn.ModuleList(
            [nn.Conv2d(2048, n, 1, bias=True) for n in (80, 64, 80, 3, 27, 2, 1)]
        )
        for m in self.final_layers:
            nn.init.constant_(m.weight, 0.0)
            nn.init.constant_(m.bias, 0.0)

    def forward(self, x):
        x = self.backbone(x)
        return torch.flatten(torch.cat([layer(x) for layer in self.final_layers], dim=1), 1)


@torch.no_grad()
def randomize_(module: nn.Module, seed: int, calibration_size: int = 64) -> nn.Module:
    """Random weights that keep activations O(1) through the 50 layers; returns it in eval mode.

    Convs: He normal (heads included, so the coefficients are not the zero-init constants).
    BatchNorms: random affine, bn3 of every block small (0.1-0.3), so the residual stream grows
    slowly; running statistics measured on a random batch (one train-mode pass with momentum
    1), then perturbed, so that inference BN neither explodes nor is an exact whitening.
    """
    gen = torch.Generator().manual_seed(seed)

    def normal(shape, std):
        return torch.randn(shape, generator=gen) * std

    def uniform(shape, lo, hi):
        return lo + (hi - lo) * torch.rand(shape, generator=gen)

    last_bns = {id(m.bn3) for m in module.modules() if isinstance(m, Bottleneck)}
    bns = []
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            fan_in = m.weight[0].numel()
            m.weight.copy_(normal(m.weight.shape, (2.0 / fan_in) ** 0.5))
            if m.bias is not None:
                m.bias.copy_(normal(m.bias.shape, 0.1))
        elif isinstance(m, nn.BatchNorm2d):
            lo, hi = (0.1, 0.3) if id(m) in last_bns else (0.5, 1.5)
            m.weight.copy_(uniform(m.weight.shape, lo, hi))
            m.bias.copy_(normal(m.bias.shape, 0.2))
            m.reset_running_stats()
            m.momentum = 1.0
            bns.append(m)
    module.train()
    # `stages` skips the Caffe AvgPool2d(7), which needs a 224 input.
    forward = getattr(module, "stages", module)
    forward(torch.rand((2, 3, calibration_size, calibration_size), generator=gen))
    for m in bns:
        m.momentum = 0.1
        std = m.running_var.sqrt()
        m.running_mean.add_(0.1 * std * normal(std.shape, 1.0))
        m.running_var.mul_(uniform(std.shape, 0.7, 1.3))
    return module.eval()
