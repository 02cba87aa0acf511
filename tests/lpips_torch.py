"""PyTorch references for nets/lpips.py: mirrors of torchvision's `alexnet()` and `vgg16()`
with torchvision's key names, and the REAL `lpips.LPIPS` (lpips 0.1.4) built on them.

- `AlexNet`, `VGG16`: torchvision/models/alexnet.py and vgg.py (cfg 'D', no BatchNorm):
  `features` exactly as torchvision's (indices 0..12 and 0..30), `classifier.{1,4,6}` and
  `classifier.{0,3,6}`; the classifiers are narrowed (hidden width 8 instead of 4096) to keep
  tests light, only their key names matter to the converter.
- `real_lpips`: lpips 0.1.4 imports torchvision at module level (pretrained_networks.py:
  `from torchvision import models as tv`, then `tv.alexnet(pretrained=...).features` /
  `tv.vgg16(pretrained=...).features`). torchvision cannot be installed beside this torch
  build, so lpips is imported with a stand-in `torchvision` module whose `models.alexnet` /
  `models.vgg16` return a given mirror, and sys.modules is restored afterwards. lpips/__init__
  also imports lpips.trainer, which imports tqdm (absent here on purpose; only its training
  loop uses it): a stand-in covers that import too when tqdm is missing. Everything else is
  the package's own code: ScalingLayer, slices, normalize_tensor, NetLinLayer, heads loading.
"""

import contextlib
import importlib
import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tests import vgg_torch

VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M")
VGG16_CFG += (512, 512, 512, "M")
CHANNELS = {"alex": (64, 192, 384, 256, 256), "vgg": (64, 128, 256, 512, 512)}


class AlexNet(nn.Module):
    def __init__(self, hidden: int = 8, num_classes: int = 1000):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(),
            nn.Linear(256 * 6 * 6, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )


class VGG16(vgg_torch.VGG):
    def __init__(self, hidden: int = 8, num_classes: int = 1000):
        super().__init__(VGG16_CFG, hidden, num_classes)


MIRRORS = {"alex": AlexNet, "vgg": VGG16}


@torch.no_grad()
def random_backbone(net: str, seed: int) -> nn.Module:
    """A mirror with He-normal convs and N(0, 0.1) biases (activations stay O(1) to the last
    slice; torch's default init would shrink them layer by layer)."""
    module = MIRRORS[net]()
    gen = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            fan_in = m.weight[0].numel()
            m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
            m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
    return module.eval()


def random_heads(net: str, seed: int) -> dict[str, torch.Tensor]:
    """lpips v0.1-layout heads, non-negative like the trained ones (lpips clamps them >= 0)."""
    gen = torch.Generator().manual_seed(seed)
    return {
        f"lin{k}.model.1.weight": torch.rand((1, c, 1, 1), generator=gen)
        for k, c in enumerate(CHANNELS[net])
    }


@contextlib.contextmanager
def _lpips_with_stand_ins(backbone: nn.Module):
    """Imports a fresh `lpips` bound to a stand-in torchvision; restores sys.modules after."""

    # Keyword-only `pretrained`: lpips 0.1.4 calls tv.alexnet(pretrained=...) and
    # tv.vgg16(pretrained=...); a newer lpips passing `weights=` would fail here loudly.
    def model(*, pretrained: bool) -> nn.Module:
        assert isinstance(pretrained, bool)
        return backbone

    torchvision = types.ModuleType("torchvision")
    torchvision.models = types.ModuleType("torchvision.models")
    torchvision.models.alexnet = model
    torchvision.models.vgg16 = model
    stand_ins = {"torchvision": torchvision, "torchvision.models": torchvision.models}
    if importlib.util.find_spec("tqdm") is None:
        tqdm = types.ModuleType("tqdm")
        tqdm.tqdm = lambda iterable=None, *args, **kwargs: iterable
        stand_ins["tqdm"] = tqdm

    def ours(name: str) -> bool:
        return name in stand_ins or name == "lpips" or name.startswith(("lpips.", "torchvision."))

    saved = {name: module for name, module in sys.modules.items() if ours(name)}
    for name in saved:
        del sys.modules[name]
    sys.modules.update(stand_ins)
    try:
        yield importlib.import_module("lpips")
    finally:
        for name in [name for name in sys.modules if ours(name)]:
            del sys.modules[name]
        sys.modules.update(saved)


def real_lpips(net: str, backbone: nn.Module, heads: str | Path | None = None) -> nn.Module:
    """The lpips package's own `LPIPS(net=net, version='0.1')` (eval mode) on `backbone` (a
    mirror whose `features` it slices), heads read by lpips itself from `heads` (a .pth in the
    v0.1 layout; None: the package's weights/v0.1/{net}.pth)."""
    with _lpips_with_stand_ins(backbone) as lpips:
        model = lpips.LPIPS(
            pretrained=True,
            net=net,
            version="0.1",
            model_path=None if heads is None else str(heads),
            verbose=False,
        )
    # lpips' slices hold the mirror's own conv modules (features up to the last ReLU).
    used = list(model.net.parameters())
    assert all(p is q for p, q in zip(used, backbone.features.parameters(), strict=True))
    return model.eval()


@torch.no_grad()
def lpips_distance(model: nn.Module, images0: np.ndarray, images1: np.ndarray) -> np.ndarray:
    """[B] distances of [B, H, W, 3] batches in [0, 1] (lpips' normalize=True maps them)."""

    def nchw(x):
        return torch.from_numpy(np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2))))

    out = model(nchw(images0), nchw(images1), normalize=True)  # [B, 1, 1, 1]
    return out.reshape(-1).numpy()
