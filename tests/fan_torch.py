"""PyTorch reference for nets/fan.py, written from 1adrianb/face-alignment with its state-dict
names (face-alignment itself is not installed).

- `FAN`: face_alignment/models.py (`models/fan.py` in later versions): ConvBlock, HourGlass
  and FAN with average pooling (the released weights' architecture); `FAN(4).state_dict()`
  has the key names of the released 2DFAN4 weights. `num_modules` is configurable for speed.
- `get_preds_fromhm`, `transform_np`: face_alignment/utils.py (>= 1.2, numpy/numba; the api
  calls it on `out.numpy()`), transcribed loop by loop.
- `crop`, `transform`: face_alignment/utils.py (the crop's corners go through the torch
  float32 `transform`), and `center_scale`: api.py's box -> (center, scale); `crop` needs
  OpenCV (an evaluation extra) like the reference.
"""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def conv3x3(in_planes, out_planes):
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)


class ConvBlock(nn.Module):
    def __init__(self, in_planes, out_planes):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = conv3x3(in_planes, int(out_planes / 2))
        self.bn2 = nn.BatchNorm2d(int(out_planes / 2))
        self.conv2 = conv3x3(int(out_planes / 2), int(out_planes / 4))
        self.bn3 = nn.BatchNorm2d(int(out_planes / 4))
        self.conv3 = conv3x3(int(out_planes / 4), int(out_planes / 4))
        if in_planes != out_planes:
            self.downsample = nn.Sequential(
                nn.BatchNorm2d(in_planes),
                nn.ReLU(True),
                nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=1, bias=False),
            )
        else:
            self.downsample = None

    def forward(self, x):
        residual = x
        out1 = self.conv1(F.relu(self.bn1(x), True))
        out2 = self.conv2(F.relu(self.bn2(out1), True))
        out3 = self.conv3(F.relu(self.bn3(out2), True))
        out3 = torch.cat((out1, out2, out3), 1)
        if self.downsample is not None:
            residual = self.downsample(residual)
        out3 += residual
        return out3


class HourGlass(nn.Module):
    def __init__(self, num_modules, depth, num_features):
        super().__init__()
        self.num_modules = num_modules
        self.depth = depth
        self.features = num_features
        self._generate_network(self.depth)

    def _generate_network(self, level):
        self.add_module("b1_" + str(level), ConvBlock(self.features, self.features))
        self.add_module("b2_" + str(level), ConvBlock(self.features, self.features))
        if level > 1:
            self._generate_network(level - 1)
        else:
            self.add_module("b2_plus_" + str(level), ConvBlock(self.features, self.features))
        self.add_module("b3_" + str(level), ConvBlock(self.features, self.features))

    def _forward(self, level, inp):
        up1 = self._modules["b1_" + str(level)](inp)
        low1 = F.avg_pool2d(inp, 2, stride=2)
        low1 = self._modules["b2_" + str(level)](low1)
        if level > 1:
            low2 = self._forward(level - 1, low1)
        else:
            low2 = self._modules["b2_plus_" + str(level)](low1)
        low3 = self._modules["b3_" + str(level)](low2)
        up2 = F.interpolate(low3, scale_factor=2, mode="nearest")
        return up1 + up2

    def forward(self, x):
        return self._forward(self.depth, x)


class FAN(nn.Module):
    def __init__(self, num_modules=1):
        super().__init__()
        self.num_modules = num_modules
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3)
        self.bn1 = nn.BatchNorm2d(64)
        self.conv2 = ConvBlock(64, 128)
        self.conv3 = ConvBlock(128, 128)
        self.conv4 = ConvBlock(128, 256)
        for hg_module in range(self.num_modules):
            self.add_module("m" + str(hg_module), HourGlass(1, 4, 256))
            self.add_module("top_m_" + str(hg_module), ConvBlock(256, 256))
            self.add_module(
                "conv_last" + str(hg_module),
                nn.Conv2d(256, 256, kernel_size=1, stride=1, padding=0),
            )
            self.add_module("bn_end" + str(hg_module), nn.BatchNorm2d(256))
            self.add_module(
                "l" + str(hg_module), nn.Conv2d(256, 68, kernel_size=1, stride=1, padding=0)
            )
            if hg_module < self.num_modules - 1:
                self.add_module(
                    "bl" + str(hg_module), nn.Conv2d(256, 256, kernel_size=1, stride=1, padding=0)
                )
                self.add_module(
                    "al" + str(hg_module), nn.Conv2d(68, 256, kernel_size=1, stride=1, padding=0)
                )

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)), True)
        x = F.avg_pool2d(self.conv2(x), 2, stride=2)
        x = self.conv3(x)
        x = self.conv4(x)
        previous = x
        outputs = []
        for i in range(self.num_modules):
            hg = self._modules["m" + str(i)](previous)
            ll = self._modules["top_m_" + str(i)](hg)
            ll = F.relu(
                self._modules["bn_end" + str(i)](self._modules["conv_last" + str(i)](ll)), True
            )
            tmp_out = self._modules["l" + str(i)](ll)
            outputs.append(tmp_out)
            if i < self.num_modules - 1:
                ll = self._modules["bl" + str(i)](ll)
                tmp_out_ = self._modules["al" + str(i)](tmp_out)
                previous = previous + ll + tmp_out_
        return outputs


@torch.no_grad()
def randomize_(module: nn.Module, seed: int, calibration_images: np.ndarray) -> nn.Module:
    """Random weights and BatchNorm statistics that keep activations O(1); eval mode.

    Convs: He normal, biases N(0, 0.1). BatchNorms: affine weight U(0.5, 1.5), bias N(0, 0.2);
    running statistics measured on `calibration_images` ([B, H, W, 3] in [0, 1]; one
    train-mode pass with momentum 1), then perturbed (mean + 0.05 std N(0, 1), var x
    U(0.8, 1.25)), so inference BN neither explodes nor is an exact whitening. Calibrate on the
    images the test runs: statistics of other images would not fit the hourglasses' 4x4
    bottom (16 samples per channel), and the mismatch compounds through the residual sums
    (every hourglass level doubles its input).
    """
    gen = torch.Generator().manual_seed(seed)

    def normal(shape, std):
        return torch.randn(shape, generator=gen) * std

    def uniform(shape, lo, hi):
        return lo + (hi - lo) * torch.rand(shape, generator=gen)

    bns = []
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            fan_in = m.weight[0].numel()
            m.weight.copy_(normal(m.weight.shape, (2.0 / fan_in) ** 0.5))
            if m.bias is not None:
                m.bias.copy_(normal(m.bias.shape, 0.1))
        elif isinstance(m, nn.BatchNorm2d):
            m.weight.copy_(uniform(m.weight.shape, 0.5, 1.5))
            m.bias.copy_(normal(m.bias.shape, 0.2))
            m.reset_running_stats()
            m.momentum = 1.0
            bns.append(m)
    module.train()
    module(torch.from_numpy(np.ascontiguousarray(calibration_images.transpose(0, 3, 1, 2))))
    for m in bns:
        m.momentum = 0.1
        std = m.running_var.sqrt()
        m.running_mean.add_(0.05 * std * normal(std.shape, 1.0))
        m.running_var.mul_(uniform(std.shape, 0.8, 1.25))
    return module.eval()


# ------------------------------------------------------------------- face_alignment/utils.py


def transform_np(point, center, scale, resolution, invert=False):
    _pt = np.ones(3)
    _pt[0] = point[0]
    _pt[1] = point[1]
    h = 200.0 * scale
    t = np.eye(3)
    t[0, 0] = resolution / h
    t[1, 1] = resolution / h
    t[0, 2] = resolution * (-center[0] / h + 0.5)
    t[1, 2] = resolution * (-center[1] / h + 0.5)
    if invert:
        t = np.ascontiguousarray(np.linalg.pinv(t))
    new_point = np.dot(t, _pt)[0:2]
    return new_point.astype(np.int32)


def get_preds_fromhm(hm, center=None, scale=None):
    """hm: [B, C, H, W] float32 numpy -> (preds [B, C, 2] in 64-grid units, preds_orig)."""
    B, C, H, W = hm.shape
    idx = np.argmax(hm.reshape(B, C, H * W), axis=2)
    return _get_preds_fromhm(hm, idx, center, scale)


def _get_preds_fromhm(hm, idx, center=None, scale=None):
    B, C, H, W = hm.shape
    idx = idx + 1
    preds = idx.repeat(2).reshape(B, C, 2).astype(np.float32)
    preds[:, :, 0] = (preds[:, :, 0] - 1) % W + 1
    preds[:, :, 1] = np.floor((preds[:, :, 1] - 1) / H) + 1

    for i in range(B):
        for j in range(C):
            hm_ = hm[i, j, :]
            pX, pY = int(preds[i, j, 0]) - 1, int(preds[i, j, 1]) - 1
            if pX > 0 and pX < 63 and pY > 0 and pY < 63:
                diff = np.array(
                    [hm_[pY, pX + 1] - hm_[pY, pX - 1], hm_[pY + 1, pX] - hm_[pY - 1, pX]]
                )
                preds[i, j] += np.sign(diff) * 0.25

    preds -= 0.5

    preds_orig = np.zeros_like(preds)
    if center is not None and scale is not None:
        for i in range(B):
            for j in range(C):
                preds_orig[i, j] = transform_np(preds[i, j], center, scale, H, True)
    return preds, preds_orig


def transform(point, center, scale, resolution, invert=False):
    _pt = torch.ones(3)
    _pt[0] = point[0]
    _pt[1] = point[1]
    h = 200.0 * scale
    t = torch.eye(3)
    t[0, 0] = resolution / h
    t[1, 1] = resolution / h
    t[0, 2] = resolution * (-center[0] / h + 0.5)
    t[1, 2] = resolution * (-center[1] / h + 0.5)
    if invert:
        t = torch.inverse(t)
    new_point = (torch.matmul(t, _pt))[0:2]
    return new_point.int()


def crop(image, center, scale, resolution=256.0):
    import cv2

    ul = transform([1, 1], center, scale, resolution, True)
    br = transform([resolution, resolution], center, scale, resolution, True)
    newDim = np.array([br[1] - ul[1], br[0] - ul[0], image.shape[2]], dtype=np.int32)
    newImg = np.zeros(newDim, dtype=np.uint8)
    ht = image.shape[0]
    wd = image.shape[1]
    newX = np.array([max(1, -ul[0] + 1), min(br[0], wd) - ul[0]], dtype=np.int32)
    newY = np.array([max(1, -ul[1] + 1), min(br[1], ht) - ul[1]], dtype=np.int32)
    oldX = np.array([max(1, ul[0] + 1), min(br[0], wd)], dtype=np.int32)
    oldY = np.array([max(1, ul[1] + 1), min(br[1], ht)], dtype=np.int32)
    newImg[newY[0] - 1 : newY[1], newX[0] - 1 : newX[1]] = image[
        oldY[0] - 1 : oldY[1], oldX[0] - 1 : oldX[1], :
    ]
    newImg = cv2.resize(
        newImg, dsize=(int(resolution), int(resolution)), interpolation=cv2.INTER_LINEAR
    )
    return newImg


def center_scale(d, reference_scale=195):
    """api.py get_landmarks_from_image: a detection (x1, y1, x2, y2, score) -> center, scale."""
    center = np.array([d[2] - (d[2] - d[0]) / 2.0, d[3] - (d[3] - d[1]) / 2.0])
    center[1] = center[1] - (d[3] - d[1]) * 0.12
    scale = (d[2] - d[0] + d[3] - d[1]) / reference_scale
    return center, scale


def get_landmarks(net, image, d):
    """api.py get_landmarks_from_image for one detection d, 2D FAN, flip_input=False:
    (pts [68, 2] in crop pixels, pts_img [68, 2] in image pixels, crop uint8)."""
    center, scale = center_scale(d)
    inp = crop(image, center, scale)
    x = torch.from_numpy(inp.transpose((2, 0, 1))).float().div_(255.0).unsqueeze_(0)
    with torch.no_grad():
        out = net(x)[-1].detach().numpy()
    pts, pts_img = get_preds_fromhm(out, center, scale)
    return pts.reshape(68, 2) * 4, pts_img.reshape(68, 2), inp
