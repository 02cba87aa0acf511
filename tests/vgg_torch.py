"""PyTorch references for nets/vgg19.py and nets/vggface2.py, written from the published
architectures with their state-dict names (torchvision is not installed beside this torch).

- `VGG19`: torchvision's `vgg19()` (cfg 'E', no BatchNorm): `features` = 16 convs, ReLUs and
  5 max pools (indices 0..36), `classifier.{0,3,6}`. The classifier is narrowed (hidden width
  8 instead of 4096) to keep tests light; only its key names matter to the converter.
- `fomm_vgg19_features`: FOMM's `Vgg19.forward` (modules/model.py): ImageNet mean/std, then
  the slices features[0:2], [2:7], [7:12], [12:21], [21:30].
- `ResNet50ft`: cydonia999/VGGFace2-pytorch `resnet50(num_classes=8631)`, i.e.
  tests/resnet_torch.py's Caffe ResNet plus `fc`; `reference_transform` is its
  datasets/vgg_face2.py transform for a 256 px image (CenterCrop(224), RGB -> BGR, -mean).
"""

import numpy as np
import torch
from torch import nn

from tests import resnet_torch

VGG19_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M")
VGG19_CFG += (512, 512, 512, 512, "M", 512, 512, 512, 512, "M")
FOMM_SLICES = ((0, 2), (2, 7), (7, 12), (12, 21), (21, 30))
MEAN_BGR = np.array([91.4953, 103.8827, 131.0912])  # datasets/vgg_face2.py


class VGG(nn.Module):
    """torchvision's VGG without BatchNorm for a layer config (`features` from make_layers),
    with the classifier narrowed (hidden width 8)."""

    def __init__(self, cfg, hidden: int = 8, num_classes: int = 1000):
        super().__init__()
        layers, channels = [], 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(channels, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                channels = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, hidden),
            nn.ReLU(True),
            nn.Dropout(),
            nn.Linear(hidden, hidden),
            nn.ReLU(True),
            nn.Dropout(),
            nn.Linear(hidden, num_classes),
        )


class VGG19(VGG):
    def __init__(self, hidden: int = 8, num_classes: int = 1000):
        super().__init__(VGG19_CFG, hidden, num_classes)


def fomm_vgg19_features(vgg: VGG19, x: torch.Tensor) -> list[torch.Tensor]:
    """FOMM's Vgg19.forward: x NCHW RGB in [0, 1] -> [relu1_1, ..., relu5_1] NCHW."""
    mean = torch.tensor([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).reshape(1, 3, 1, 1)
    x = (x - mean) / std
    out = []
    for start, stop in FOMM_SLICES:
        x = vgg.features[start:stop](x)
        out.append(x)
    return out


@torch.no_grad()
def randomize_vgg_(module: nn.Module, seed: int) -> nn.Module:
    """He-normal convs and N(0, 0.1) biases, so relu5_1 stays O(1) (torch's default init shrinks
    activations ~1/sqrt(3) per layer, which would make an atol comparison vacuous)."""
    gen = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            fan_in = m.weight[0].numel()
            m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
            m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
    return module.eval()


class ResNet50ft(resnet_torch.ResNet):
    """VGGFace2-pytorch resnet50_ft; `include_top=False` returns the [B, 2048, 1, 1] pool."""

    def __init__(self, num_classes: int = 8631, include_top: bool = True):
        super().__init__(caffe=True)
        self.include_top = include_top
        self.fc = nn.Linear(2048, num_classes)

    def forward(self, x):
        x = self.avgpool(self.stages(x)["layer4"])
        if not self.include_top:
            return x
        return self.fc(x.view(x.size(0), -1))


def reference_transform(images: np.ndarray) -> torch.Tensor:
    """datasets/vgg_face2.py for 256x256 images ([B, 256, 256, 3] RGB in [0, 1]): Resize(256)
    is the identity, CenterCrop(224) offsets by 16; then RGB -> BGR, 0-255, -mean; NCHW."""
    assert images.shape[1:3] == (256, 256)
    img = images[:, 16:240, 16:240, ::-1].astype(np.float64) * 255.0 - MEAN_BGR
    return torch.from_numpy(np.ascontiguousarray(img.transpose(0, 3, 1, 2), np.float32))
