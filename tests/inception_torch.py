"""PyTorch reference for nets/inception.py, written from the published architecture with
pytorch-fid's state-dict names (torchvision is not installed beside this torch).

- `BasicConv2d`, `InceptionA` .. `InceptionE`, `Inception3`: torchvision's
  models/inception.py (eval path, `aux_logits=False` only: pytorch-fid builds it so).
- `FIDInceptionA/C/E_1/E_2`, `fid_inception_v3`: pytorch-fid 0.3.0's inception.py: the
  branch_pool average pools exclude the padding; Mixed_7c max-pools. `num_classes=1008`.
- `pool3`: pytorch-fid's `InceptionV3([3]).forward`: bilinear resize to 299 (align_corners
  False), 2x - 1, the trunk, AdaptiveAvgPool2d(1), flattened to [B, 2048].
- `standin_torchvision`: a stand-in `torchvision` package made of these classes, so the real
  `pytorch_fid.inception` imports and builds its network on them (see the context manager).
"""

import contextlib
import sys
import types

import torch
import torch.nn.functional as F
from torch import nn

FID_NUM_CLASSES = 1008  # the TF graph's 1001 + padding classes, as pytorch-fid builds fc


class BasicConv2d(nn.Module):
    def __init__(self, in_channels, out_channels, **kwargs):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)), inplace=True)


class InceptionA(nn.Module):
    def __init__(self, in_channels, pool_features):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, kernel_size=1)

    def forward(self, x, count_include_pad=True):
        branch1x1 = self.branch1x1(x)
        branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        pool = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=count_include_pad)
        branch_pool = self.branch_pool(pool)
        return torch.cat([branch1x1, branch5x5, branch3x3dbl, branch_pool], 1)


class InceptionB(nn.Module):
    def __init__(self, in_channels):
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x):
        branch3x3 = self.branch3x3(x)
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        branch_pool = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([branch3x3, branch3x3dbl, branch_pool], 1)


class InceptionC(nn.Module):
    def __init__(self, in_channels, channels_7x7):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x, count_include_pad=True):
        branch1x1 = self.branch1x1(x)
        branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        branch7x7dbl = self.branch7x7dbl_1(x)
        for conv in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4):
            branch7x7dbl = conv(branch7x7dbl)
        branch7x7dbl = self.branch7x7dbl_5(branch7x7dbl)
        pool = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=count_include_pad)
        branch_pool = self.branch_pool(pool)
        return torch.cat([branch1x1, branch7x7, branch7x7dbl, branch_pool], 1)


class InceptionD(nn.Module):
    def __init__(self, in_channels):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x):
        branch3x3 = self.branch3x3_2(self.branch3x3_1(x))
        branch7x7x3 = self.branch7x7x3_1(x)
        for conv in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            branch7x7x3 = conv(branch7x7x3)
        branch_pool = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([branch3x3, branch7x7x3, branch_pool], 1)


class InceptionE(nn.Module):
    def __init__(self, in_channels):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def pool(self, x):  # torchvision; FIDInceptionE_1/E_2 override it
        return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1)

    def forward(self, x):
        branch1x1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        branch3x3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        branch3x3dbl = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        branch_pool = self.branch_pool(self.pool(x))
        return torch.cat([branch1x1, branch3x3, branch3x3dbl, branch_pool], 1)


class FIDInceptionA(InceptionA):
    def forward(self, x):
        return super().forward(x, count_include_pad=False)


class FIDInceptionC(InceptionC):
    def forward(self, x):
        return super().forward(x, count_include_pad=False)


class FIDInceptionE_1(InceptionE):  # noqa: N801 (pytorch-fid's name)
    def pool(self, x):
        return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class FIDInceptionE_2(InceptionE):  # noqa: N801
    def pool(self, x):
        return F.max_pool2d(x, kernel_size=3, stride=1, padding=1)


class Inception3(nn.Module):
    """torchvision's Inception3 without AuxLogits; `fid=True` swaps in pytorch-fid's blocks."""

    def __init__(self, num_classes=1000, aux_logits=False, fid=False):
        super().__init__()
        if aux_logits:
            raise NotImplementedError("the mirror has no AuxLogits (pytorch-fid drops them)")
        a, c, e1, e2 = (
            (FIDInceptionA, FIDInceptionC, FIDInceptionE_1, FIDInceptionE_2)
            if fid
            else (InceptionA, InceptionC, InceptionE, InceptionE)
        )
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.maxpool1 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.maxpool2 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Mixed_5b = a(192, pool_features=32)
        self.Mixed_5c = a(256, pool_features=64)
        self.Mixed_5d = a(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = c(768, channels_7x7=128)
        self.Mixed_6c = c(768, channels_7x7=160)
        self.Mixed_6d = c(768, channels_7x7=160)
        self.Mixed_6e = c(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = e1(1280)
        self.Mixed_7c = e2(2048)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(p=0.5)
        self.fc = nn.Linear(2048, num_classes)

    def trunk(self, x):
        """[B, 3, H, W] in [-1, 1] -> [B, 2048, 1, 1] (pytorch-fid's blocks 0..3)."""
        for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1"):
            x = getattr(self, name)(x)
        for name in ("Conv2d_3b_1x1", "Conv2d_4a_3x3", "maxpool2"):
            x = getattr(self, name)(x)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return self.avgpool(x)


def fid_inception_v3() -> Inception3:
    """pytorch-fid's `fid_inception_v3()` network, random weights (nothing is downloaded)."""
    return Inception3(num_classes=FID_NUM_CLASSES, aux_logits=False, fid=True)


def pool3(net: Inception3, x: torch.Tensor) -> torch.Tensor:
    """pytorch-fid `InceptionV3([3])(x)[0]` flattened: x [B, 3, H, W] in [0, 1] -> [B, 2048]."""
    x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
    return net.trunk(2 * x - 1).flatten(1)


@torch.no_grad()
def randomize_(net: Inception3, seed: int, calibration: torch.Tensor) -> Inception3:
    """Random weights that keep activations O(1) through the 94 BasicConv2d; eval mode.

    Convs and fc: He normal. BatchNorms: weight U(0.5, 1.5), bias 1 + N(0, 0.2); running
    statistics are those of each BN's input in an eval-mode pass on `calibration`
    ([B, 3, H, W] in [0, 1]), set layer by layer in forward order and perturbed (mean + 0.1 std
    N(0, 1), var x U(0.7, 1.3)), so inference BN is exercised (neither the identity nor an
    exact whitening) and, each BN being measured behind the already perturbed ones, the
    perturbations do not compound. Biases near +1 keep most ReLUs in their linear part: with
    zero-mean biases this random network is chaotic (a 1e-6 input change grows to ~1e-3 in
    pool3), so float32 rounding alone would exceed atol 1e-4; here it stays ~1e-5 while a
    one-block defect (Mixed_5b pooling with the padding counted) still moves pool3 by ~0.3.
    """
    gen = torch.Generator().manual_seed(seed)

    def normal(shape, std):
        return torch.randn(shape, generator=gen) * std

    def uniform(shape, lo, hi):
        return lo + (hi - lo) * torch.rand(shape, generator=gen)

    def calibrate(bn, inputs):
        mean, var = inputs[0].mean((0, 2, 3)), inputs[0].var((0, 2, 3))
        bn.running_mean.copy_(mean + 0.1 * var.sqrt() * normal(mean.shape, 1.0))
        bn.running_var.copy_(var * uniform(var.shape, 0.7, 1.3))

    hooks = []
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.weight.copy_(normal(m.weight.shape, (2.0 / m.weight[0].numel()) ** 0.5))
            if m.bias is not None:
                m.bias.copy_(normal(m.bias.shape, 0.1))
        elif isinstance(m, nn.BatchNorm2d):
            m.weight.copy_(uniform(m.weight.shape, 0.5, 1.5))
            m.bias.copy_(1.0 + normal(m.bias.shape, 0.2))
            hooks.append(m.register_forward_pre_hook(calibrate))
    net.eval()
    try:
        pool3(net, calibration)
    finally:
        for hook in hooks:
            hook.remove()
    return net


@contextlib.contextmanager
def standin_torchvision():
    """Imports the real `pytorch_fid.inception` on a stand-in `torchvision`.

    Why: pytorch-fid subclasses torchvision's InceptionA/C/E and builds torchvision's
    `inception_v3`, and torchvision cannot be installed beside this CPU torch. With this
    mirror's classes standing in, pytorch-fid's own code (its FID block forwards,
    `fid_inception_v3`'s layout and strict `load_state_dict`, `InceptionV3.forward`) runs,
    which checks the mirror against the published code rather than only against our reading
    of it. Yields the module; sys.modules is restored afterwards (the real pytorch_fid
    modules imported on the stand-in are dropped too).
    """
    saved = {
        name: module
        for name, module in sys.modules.items()
        if name.split(".")[0] in ("torchvision", "pytorch_fid")
    }
    for name in saved:
        del sys.modules[name]

    def inception_v3(num_classes=1000, aux_logits=True, weights=None, init_weights=None):
        assert weights is None and init_weights is False  # what pytorch-fid asks for
        return Inception3(num_classes=num_classes, aux_logits=aux_logits)

    tv = types.ModuleType("torchvision")
    tv.__version__ = "0.20.0"  # >= 0.13: the `weights=` API, init_weights=False passed
    tv.models = types.ModuleType("torchvision.models")
    tv.models.inception = types.ModuleType("torchvision.models.inception")
    tv.models.inception_v3 = inception_v3
    for cls in (BasicConv2d, InceptionA, InceptionB, InceptionC, InceptionD, InceptionE):
        setattr(tv.models.inception, cls.__name__, cls)
    tv.models.inception.Inception3 = Inception3
    stand_ins = {
        "torchvision": tv,
        "torchvision.models": tv.models,
        "torchvision.models.inception": tv.models.inception,
    }
    sys.modules.update(stand_ins)
    try:
        import pytorch_fid.inception

        yield pytorch_fid.inception
    finally:
        for name in [n for n in sys.modules if n.split(".")[0] in ("torchvision", "pytorch_fid")]:
            del sys.modules[name]
        sys.modules.update(saved)
