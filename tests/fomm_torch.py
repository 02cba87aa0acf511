"""PyTorch reference implementation of the First Order Motion Model (FOMM) networks.

Written from the published architecture of AliaksandrSiarohin/first-order-model
(modules/util.py, keypoint_detector.py, dense_motion.py, generator.py,
discriminator.py) and used by the tests as ground truth for the JAX/Flax port.
Plain torch, CPU, float32. Module attribute names match the original exactly, so
``state_dict()`` keys equal those of FOMM checkpoints (``SynchronizedBatchNorm2d``
is replaced by ``torch.nn.BatchNorm2d``, which has the same keys).

Deliberate, documented quirk (interpolation conventions):
  * every ``F.grid_sample`` call passes ``align_corners=True``. FOMM was trained
    with torch 1.0, whose ``grid_sample`` behaved as ``align_corners=True`` before
    the argument existed (the default changed to False in torch 1.3);
  * bilinear ``F.interpolate`` calls keep FOMM's mode and state
    ``align_corners=False`` explicitly (the default since torch 0.4.1);
  * ``UpBlock2d`` upsamples with nearest x2 (``F.interpolate(x, scale_factor=2)``)
    and ``AntiAliasInterpolation2d`` subsamples with nearest
    ``F.interpolate(out, scale_factor=(s, s))``, as in FOMM.

Extras beyond FOMM: the generator output dict also carries ``'deformation'``
([B, h, w, 2]); ``build_fomm(model_params)`` builds the three networks from a
FOMM yaml ``model_params`` dict; ``randomize_(module, seed)`` fills parameters and
BatchNorm statistics with deterministic, well-scaled random values.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "make_coordinate_grid",
    "kp2gaussian",
    "ResBlock2d",
    "UpBlock2d",
    "DownBlock2d",
    "SameBlock2d",
    "Encoder",
    "Decoder",
    "Hourglass",
    "AntiAliasInterpolation2d",
    "KPDetector",
    "DenseMotionNetwork",
    "OcclusionAwareGenerator",
    "DiscDownBlock2d",
    "Discriminator",
    "MultiScaleDiscriminator",
    "build_fomm",
    "randomize_",
]

BatchNorm2d = nn.BatchNorm2d


# ----------------------------------------------------------------------------
# util.py
# ----------------------------------------------------------------------------


def make_coordinate_grid(spatial_size, dtype=torch.float32, device=None):
    """[h, w, 2] grid of (x, y) coordinates spanning [-1, 1] x [-1, 1]."""
    h, w = (int(s) for s in spatial_size)
    x = 2 * (torch.arange(w, dtype=dtype, device=device) / (w - 1)) - 1
    y = 2 * (torch.arange(h, dtype=dtype, device=device) / (h - 1)) - 1
    xx = x.view(1, w).expand(h, w)
    yy = y.view(h, 1).expand(h, w)
    return torch.stack([xx, yy], dim=2)


def kp2gaussian(kp, spatial_size, kp_variance):
    """Gaussian heatmaps [..., h, w] centred at kp['value'] ([..., 2])."""
    mean = kp["value"]
    grid = make_coordinate_grid(spatial_size, dtype=mean.dtype, device=mean.device)
    lead = mean.shape[:-1]
    grid = grid.view((1,) * len(lead) + grid.shape)
    mean = mean.view(lead + (1, 1, 2))
    return torch.exp(-0.5 * ((grid - mean) ** 2).sum(-1) / kp_variance)


class ResBlock2d(nn.Module):
    """Pre-activation residual block (BN-ReLU-conv twice), keeps resolution."""

    def __init__(self, in_features, kernel_size, padding):
        super().__init__()
        self.conv1 = nn.Conv2d(in_features, in_features, kernel_size=kernel_size, padding=padding)
        self.conv2 = nn.Conv2d(in_features, in_features, kernel_size=kernel_size, padding=padding)
        self.norm1 = BatchNorm2d(in_features, affine=True)
        self.norm2 = BatchNorm2d(in_features, affine=True)

    def forward(self, x):
        out = self.conv1(F.relu(self.norm1(x)))
        out = self.conv2(F.relu(self.norm2(out)))
        return out + x


class UpBlock2d(nn.Module):
    """Nearest x2 upsampling, then conv-BN-ReLU."""

    def __init__(self, in_features, out_features, kernel_size=3, padding=1, groups=1):
        super().__init__()
        self.conv = nn.Conv2d(
            in_features, out_features, kernel_size=kernel_size, padding=padding, groups=groups
        )
        self.norm = BatchNorm2d(out_features, affine=True)

    def forward(self, x):
        out = F.interpolate(x, scale_factor=2)  # nearest
        return F.relu(self.norm(self.conv(out)))


class DownBlock2d(nn.Module):
    """conv-BN-ReLU, then 2x2 average pooling."""

    def __init__(self, in_features, out_features, kernel_size=3, padding=1, groups=1):
        super().__init__()
        self.conv = nn.Conv2d(
            in_features, out_features, kernel_size=kernel_size, padding=padding, groups=groups
        )
        self.norm = BatchNorm2d(out_features, affine=True)
        self.pool = nn.AvgPool2d(kernel_size=(2, 2))

    def forward(self, x):
        return self.pool(F.relu(self.norm(self.conv(x))))


class SameBlock2d(nn.Module):
    """conv-BN-ReLU, keeps resolution."""

    def __init__(self, in_features, out_features, groups=1, kernel_size=3, padding=1):
        super().__init__()
        self.conv = nn.Conv2d(
            in_features, out_features, kernel_size=kernel_size, padding=padding, groups=groups
        )
        self.norm = BatchNorm2d(out_features, affine=True)

    def forward(self, x):
        return F.relu(self.norm(self.conv(x)))


class Encoder(nn.Module):
    """Hourglass encoder; returns the input followed by every block's output."""

    def __init__(self, block_expansion, in_features, num_blocks=3, max_features=256):
        super().__init__()
        blocks = []
        for i in range(num_blocks):
            cin = in_features if i == 0 else min(max_features, block_expansion * 2**i)
            cout = min(max_features, block_expansion * 2 ** (i + 1))
            blocks.append(DownBlock2d(cin, cout, kernel_size=3, padding=1))
        self.down_blocks = nn.ModuleList(blocks)

    def forward(self, x):
        outs = [x]
        for block in self.down_blocks:
            outs.append(block(outs[-1]))
        return outs


class Decoder(nn.Module):
    """Hourglass decoder; concatenates skips (up-path first, skip second)."""

    def __init__(self, block_expansion, in_features, num_blocks=3, max_features=256):
        super().__init__()
        blocks = []
        for i in reversed(range(num_blocks)):
            mult = 1 if i == num_blocks - 1 else 2
            cin = mult * min(max_features, block_expansion * 2 ** (i + 1))
            cout = min(max_features, block_expansion * 2**i)
            blocks.append(UpBlock2d(cin, cout, kernel_size=3, padding=1))
        self.up_blocks = nn.ModuleList(blocks)
        self.out_filters = block_expansion + in_features

    def forward(self, x):
        skips = list(x)  # do not mutate the caller's list
        out = skips.pop()
        for block in self.up_blocks:
            out = torch.cat([block(out), skips.pop()], dim=1)
        return out


class Hourglass(nn.Module):
    """U-Net style encoder/decoder."""

    def __init__(self, block_expansion, in_features, num_blocks=3, max_features=256):
        super().__init__()
        self.encoder = Encoder(block_expansion, in_features, num_blocks, max_features)
        self.decoder = Decoder(block_expansion, in_features, num_blocks, max_features)
        self.out_filters = self.decoder.out_filters

    def forward(self, x):
        return self.decoder(self.encoder(x))


class AntiAliasInterpolation2d(nn.Module):
    """Depthwise Gaussian blur followed by nearest subsampling by `scale`.

    The kernel is stored as the (non-trainable, fixed) buffer ``weight``.
    """

    def __init__(self, channels, scale):
        super().__init__()
        sigma = (1 / scale - 1) / 2
        kernel_size = 2 * round(sigma * 4) + 1
        self.ka = kernel_size // 2
        self.kb = self.ka - 1 if kernel_size % 2 == 0 else self.ka

        coords = torch.arange(kernel_size, dtype=torch.float32) - (kernel_size - 1) / 2
        g = torch.exp(-(coords**2) / (2 * sigma**2))
        kernel = g[:, None] * g[None, :]
        kernel = kernel / kernel.sum()
        kernel = kernel.view(1, 1, kernel_size, kernel_size).repeat(channels, 1, 1, 1)

        self.register_buffer("weight", kernel)
        self.groups = channels
        self.scale = scale

    def forward(self, input):
        if self.scale == 1.0:
            return input
        out = F.pad(input, (self.ka, self.kb, self.ka, self.kb))
        out = F.conv2d(out, weight=self.weight, groups=self.groups)
        return F.interpolate(out, scale_factor=(self.scale, self.scale))  # nearest


# ----------------------------------------------------------------------------
# keypoint_detector.py
# ----------------------------------------------------------------------------


class KPDetector(nn.Module):
    """Keypoint detector: soft-argmax of hourglass heatmaps (+ local jacobians)."""

    def __init__(
        self,
        block_expansion,
        num_kp,
        num_channels,
        max_features,
        num_blocks,
        temperature,
        estimate_jacobian=False,
        scale_factor=1,
        single_jacobian_map=False,
        pad=0,
    ):
        super().__init__()
        self.predictor = Hourglass(
            block_expansion,
            in_features=num_channels,
            max_features=max_features,
            num_blocks=num_blocks,
        )
        self.kp = nn.Conv2d(self.predictor.out_filters, num_kp, kernel_size=(7, 7), padding=pad)

        if estimate_jacobian:
            self.num_jacobian_maps = 1 if single_jacobian_map else num_kp
            self.jacobian = nn.Conv2d(
                self.predictor.out_filters,
                4 * self.num_jacobian_maps,
                kernel_size=(7, 7),
                padding=pad,
            )
            with torch.no_grad():  # FOMM's init: identity jacobian everywhere
                self.jacobian.weight.zero_()
                self.jacobian.bias.copy_(
                    torch.tensor([1.0, 0.0, 0.0, 1.0] * self.num_jacobian_maps)
                )
        else:
            self.jacobian = None

        self.temperature = temperature
        self.scale_factor = scale_factor
        if self.scale_factor != 1:
            self.down = AntiAliasInterpolation2d(num_channels, self.scale_factor)

    def gaussian2kp(self, heatmap):
        """Expected coordinate under each (normalised) heatmap [B, K, h, w]."""
        grid = make_coordinate_grid(heatmap.shape[2:], dtype=heatmap.dtype, device=heatmap.device)
        value = (heatmap.unsqueeze(-1) * grid[None, None]).sum(dim=(2, 3))
        return {"value": value}

    def forward(self, x):
        if self.scale_factor != 1:
            x = self.down(x)

        feature_map = self.predictor(x)
        prediction = self.kp(feature_map)

        b, k, h, w = prediction.shape
        heatmap = F.softmax(prediction.view(b, k, -1) / self.temperature, dim=2).view(b, k, h, w)
        out = self.gaussian2kp(heatmap)

        if self.jacobian is not None:
            jacobian_map = self.jacobian(feature_map).reshape(b, self.num_jacobian_maps, 4, h, w)
            jacobian = (heatmap.unsqueeze(2) * jacobian_map).view(b, k, 4, -1).sum(dim=-1)
            out["jacobian"] = jacobian.view(b, k, 2, 2)

        return out


# ----------------------------------------------------------------------------
# dense_motion.py
# ----------------------------------------------------------------------------


class DenseMotionNetwork(nn.Module):
    """Predicts a dense backward flow (and occlusion) from sparse keypoint motions."""

    def __init__(
        self,
        block_expansion,
        num_blocks,
        max_features,
        num_kp,
        num_channels,
        estimate_occlusion_map=False,
        scale_factor=1,
        kp_variance=0.01,
    ):
        super().__init__()
        self.hourglass = Hourglass(
            block_expansion=block_expansion,
            in_features=(num_kp + 1) * (num_channels + 1),
            max_features=max_features,
            num_blocks=num_blocks,
        )
        self.mask = nn.Conv2d(
            self.hourglass.out_filters, num_kp + 1, kernel_size=(7, 7), padding=(3, 3)
        )
        if estimate_occlusion_map:
            self.occlusion = nn.Conv2d(
                self.hourglass.out_filters, 1, kernel_size=(7, 7), padding=(3, 3)
            )
        else:
            self.occlusion = None

        self.num_kp = num_kp
        self.scale_factor = scale_factor
        self.kp_variance = kp_variance
        if self.scale_factor != 1:
            self.down = AntiAliasInterpolation2d(num_channels, self.scale_factor)

    def create_heatmap_representations(self, source_image, kp_driving, kp_source):
        """Eq. 6: H_k = G(kp_driving) - G(kp_source), plus a zero background map.

        Returns [B, K+1, 1, h, w].
        """
        spatial_size = source_image.shape[2:]
        heatmap = kp2gaussian(kp_driving, spatial_size, self.kp_variance) - kp2gaussian(
            kp_source, spatial_size, self.kp_variance
        )
        zeros = heatmap.new_zeros((heatmap.shape[0], 1) + tuple(spatial_size))
        return torch.cat([zeros, heatmap], dim=1).unsqueeze(2)

    def create_sparse_motions(self, source_image, kp_driving, kp_source):
        """Eq. 4: T_{s<-d}(z) = kp_s + J_s J_d^{-1} (z - kp_d); background = identity.

        Returns [B, K+1, h, w, 2].
        """
        bs, _, h, w = source_image.shape
        kp_s, kp_d = kp_source["value"], kp_driving["value"]
        identity = make_coordinate_grid((h, w), dtype=kp_s.dtype, device=kp_s.device).view(
            1, 1, h, w, 2
        )
        coords = identity - kp_d.view(bs, self.num_kp, 1, 1, 2)
        if "jacobian" in kp_driving:
            jac = torch.matmul(kp_source["jacobian"], torch.inverse(kp_driving["jacobian"]))
            jac = jac[:, :, None, None]  # [B, K, 1, 1, 2, 2]
            coords = torch.matmul(jac, coords.unsqueeze(-1)).squeeze(-1)
        driving_to_source = coords + kp_s.view(bs, self.num_kp, 1, 1, 2)
        return torch.cat([identity.expand(bs, 1, h, w, 2), driving_to_source], dim=1)

    def create_deformed_source_image(self, source_image, sparse_motions):
        """Eq. 7: source warped by each sparse motion. Returns [B, K+1, C, h, w]."""
        bs, c, h, w = source_image.shape
        n = self.num_kp + 1
        source_repeat = source_image.unsqueeze(1).expand(bs, n, c, h, w).reshape(bs * n, c, h, w)
        grids = sparse_motions.reshape(bs * n, h, w, 2)
        deformed = F.grid_sample(source_repeat, grids, align_corners=True)  # torch 1.0 behaviour
        return deformed.view(bs, n, c, h, w)

    def forward(self, source_image, kp_driving, kp_source):
        if self.scale_factor != 1:
            source_image = self.down(source_image)
        bs, _, h, w = source_image.shape

        out_dict = {}
        heatmap_representation = self.create_heatmap_representations(
            source_image, kp_driving, kp_source
        )
        sparse_motion = self.create_sparse_motions(source_image, kp_driving, kp_source)
        deformed_source = self.create_deformed_source_image(source_image, sparse_motion)
        out_dict["sparse_deformed"] = deformed_source

        inp = torch.cat([heatmap_representation, deformed_source], dim=2).view(bs, -1, h, w)
        prediction = self.hourglass(inp)

        mask = F.softmax(self.mask(prediction), dim=1)
        out_dict["mask"] = mask
        # [B, K+1, 1, h, w] * [B, K+1, 2, h, w] -> [B, 2, h, w] -> [B, h, w, 2]
        deformation = (sparse_motion.permute(0, 1, 4, 2, 3) * mask.unsqueeze(2)).sum(dim=1)
        out_dict["deformation"] = deformation.permute(0, 2, 3, 1)

        if self.occlusion is not None:  # Sec. 3.2
            out_dict["occlusion_map"] = torch.sigmoid(self.occlusion(prediction))

        return out_dict


# ----------------------------------------------------------------------------
# generator.py
# ----------------------------------------------------------------------------


class OcclusionAwareGenerator(nn.Module):
    """Encoder -> warp (dense motion) * occlusion -> residual bottleneck -> decoder."""

    def __init__(
        self,
        num_channels,
        num_kp,
        block_expansion,
        max_features,
        num_down_blocks,
        num_bottleneck_blocks,
        estimate_occlusion_map=False,
        dense_motion_params=None,
        estimate_jacobian=False,
    ):
        super().__init__()
        if dense_motion_params is not None:
            self.dense_motion_network = DenseMotionNetwork(
                num_kp=num_kp,
                num_channels=num_channels,
                estimate_occlusion_map=estimate_occlusion_map,
                **dense_motion_params,
            )
        else:
            self.dense_motion_network = None

        self.first = SameBlock2d(num_channels, block_expansion, kernel_size=(7, 7), padding=(3, 3))

        self.down_blocks = nn.ModuleList(
            [
                DownBlock2d(
                    min(max_features, block_expansion * 2**i),
                    min(max_features, block_expansion * 2 ** (i + 1)),
                    kernel_size=(3, 3),
                    padding=(1, 1),
                )
                for i in range(num_down_blocks)
            ]
        )

        self.up_blocks = nn.ModuleList(
            [
                UpBlock2d(
                    min(max_features, block_expansion * 2 ** (num_down_blocks - i)),
                    min(max_features, block_expansion * 2 ** (num_down_blocks - i - 1)),
                    kernel_size=(3, 3),
                    padding=(1, 1),
                )
                for i in range(num_down_blocks)
            ]
        )

        self.bottleneck = nn.Sequential()
        bottleneck_features = min(max_features, block_expansion * 2**num_down_blocks)
        for i in range(num_bottleneck_blocks):
            self.bottleneck.add_module(
                "r" + str(i), ResBlock2d(bottleneck_features, kernel_size=(3, 3), padding=(1, 1))
            )

        self.final = nn.Conv2d(block_expansion, num_channels, kernel_size=(7, 7), padding=(3, 3))
        self.estimate_occlusion_map = estimate_occlusion_map
        self.num_channels = num_channels

    def deform_input(self, inp, deformation):
        _, h_old, w_old, _ = deformation.shape
        _, _, h, w = inp.shape
        if (h_old, w_old) != (h, w):
            deformation = F.interpolate(
                deformation.permute(0, 3, 1, 2), size=(h, w), mode="bilinear", align_corners=False
            ).permute(0, 2, 3, 1)
        return F.grid_sample(inp, deformation, align_corners=True)  # torch 1.0 behaviour

    def forward(self, source_image, kp_driving, kp_source):
        out = self.first(source_image)
        for block in self.down_blocks:
            out = block(out)

        output_dict = {}
        if self.dense_motion_network is not None:
            dense_motion = self.dense_motion_network(
                source_image=source_image, kp_driving=kp_driving, kp_source=kp_source
            )
            output_dict["mask"] = dense_motion["mask"]
            output_dict["sparse_deformed"] = dense_motion["sparse_deformed"]
            occlusion_map = dense_motion.get("occlusion_map")
            if occlusion_map is not None:
                output_dict["occlusion_map"] = occlusion_map
            deformation = dense_motion["deformation"]
            output_dict["deformation"] = deformation  # extra key, not in FOMM

            out = self.deform_input(out, deformation)
            if occlusion_map is not None:
                if out.shape[2:] != occlusion_map.shape[2:]:
                    occlusion_map = F.interpolate(
                        occlusion_map, size=out.shape[2:], mode="bilinear", align_corners=False
                    )
                out = out * occlusion_map

            output_dict["deformed"] = self.deform_input(source_image, deformation)

        out = self.bottleneck(out)
        for block in self.up_blocks:
            out = block(out)
        output_dict["prediction"] = torch.sigmoid(self.final(out))
        return output_dict


# ----------------------------------------------------------------------------
# discriminator.py
# ----------------------------------------------------------------------------


class DiscDownBlock2d(nn.Module):
    """Discriminator block: conv (valid, optional SN) [-> InstanceNorm] -> LeakyReLU [-> pool]."""

    def __init__(self, in_features, out_features, norm=False, kernel_size=4, pool=False, sn=False):
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, kernel_size=kernel_size)
        if sn:
            self.conv = nn.utils.spectral_norm(self.conv)
        self.norm = nn.InstanceNorm2d(out_features, affine=True) if norm else None
        self.pool = pool

    def forward(self, x):
        out = self.conv(x)
        if self.norm is not None:
            out = self.norm(out)
        out = F.leaky_relu(out, 0.2)
        if self.pool:
            out = F.avg_pool2d(out, (2, 2))
        return out


class Discriminator(nn.Module):
    """Pix2Pix-like patch discriminator; returns (feature_maps, prediction_map)."""

    def __init__(
        self,
        num_channels=3,
        block_expansion=64,
        num_blocks=4,
        max_features=512,
        sn=False,
        use_kp=False,
        num_kp=10,
        kp_variance=0.01,
        **kwargs,
    ):
        super().__init__()
        blocks = []
        for i in range(num_blocks):
            cin = (
                num_channels + num_kp * use_kp
                if i == 0
                else min(max_features, block_expansion * 2**i)
            )
            cout = min(max_features, block_expansion * 2 ** (i + 1))
            blocks.append(
                DiscDownBlock2d(
                    cin, cout, norm=(i != 0), kernel_size=4, pool=(i != num_blocks - 1), sn=sn
                )
            )
        self.down_blocks = nn.ModuleList(blocks)
        self.conv = nn.Conv2d(self.down_blocks[-1].conv.out_channels, out_channels=1, kernel_size=1)
        if sn:
            self.conv = nn.utils.spectral_norm(self.conv)
        self.use_kp = use_kp
        self.kp_variance = kp_variance

    def forward(self, x, kp=None):
        out = x
        if self.use_kp:
            out = torch.cat([out, kp2gaussian(kp, x.shape[2:], self.kp_variance)], dim=1)
        feature_maps = []
        for block in self.down_blocks:
            out = block(out)
            feature_maps.append(out)
        return feature_maps, self.conv(out)


class MultiScaleDiscriminator(nn.Module):
    """One Discriminator per scale; input dict {'prediction_<s>': image}."""

    def __init__(self, scales=(), **kwargs):
        super().__init__()
        self.scales = scales
        self.discs = nn.ModuleDict(
            {str(s).replace(".", "-"): Discriminator(**kwargs) for s in scales}
        )

    def forward(self, x, kp=None):
        out_dict = {}
        for key, disc in self.discs.items():
            s = key.replace("-", ".")
            feature_maps, prediction_map = disc(x["prediction_" + s], kp)
            out_dict["feature_maps_" + s] = feature_maps
            out_dict["prediction_map_" + s] = prediction_map
        return out_dict


# ----------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------


def build_fomm(config):
    """Build (kp_detector, generator, discriminator) in eval mode.

    `config` is FOMM's yaml ``model_params`` dict (keys ``common_params``,
    ``kp_detector_params``, ``generator_params``, ``discriminator_params``);
    a full yaml dict with a ``model_params`` entry is accepted too.
    """
    if "model_params" in config:
        config = config["model_params"]
    common = dict(config.get("common_params", {}))
    kp_detector = KPDetector(**config["kp_detector_params"], **common)
    generator = OcclusionAwareGenerator(**config["generator_params"], **common)
    discriminator = MultiScaleDiscriminator(**config.get("discriminator_params", {}), **common)
    return kp_detector.eval(), generator.eval(), discriminator.eval()


_JACOBIAN_WEIGHT_SCALE = 0.1  # keeps random jacobians near identity, hence invertible
_RESIDUAL_SCALE = 0.3  # damps ResBlock2d residual branches (conv2)


@torch.no_grad()
def randomize_(module, seed):
    """Deterministically fill all parameters and BatchNorm statistics with random values.

    * Conv weights ~ N(0, 2 / fan_in) (He scale, keeps ReLU activations O(1));
      output heads (kp, jacobian, mask, occlusion, final, discriminator conv) use
      N(0, 1 / fan_in) and ResBlock2d.conv2 is further scaled by 0.3 so the residual
      bottleneck does not grow; conv biases ~ U(-0.1, 0.1);
    * BatchNorm / InstanceNorm affine weight ~ U(0.5, 1.5), bias ~ U(-0.1, 0.1);
      BatchNorm running_mean ~ U(-0.1, 0.1), running_var ~ U(0.5, 1.5);
    * spectral-norm convs: weight_orig as above; weight_v / weight_u are set by one
      power-iteration step from a random unit u (v = W^T u / |.|, u = W v / |.|),
      i.e. unit-norm, not converged, and giving sigma = u.W v = |W v| > 0;
    * KPDetector jacobian heads stay random (not FOMM's zero init): weight is scaled
      by 0.1 and the bias is identity [1, 0, 0, 1] + U(-0.1, 0.1), so the jacobians
      are non-trivial but well conditioned (DenseMotion inverts them);
    * the AntiAliasInterpolation2d ``weight`` buffer (fixed Gaussian) is untouched.
    Returns `module`.
    """
    gen = torch.Generator().manual_seed(int(seed))

    def normal(shape, std):
        return torch.randn(shape, generator=gen) * std

    def uniform(shape, lo, hi):
        return lo + (hi - lo) * torch.rand(shape, generator=gen)

    # Output heads (no ReLU after them) get gain 1 instead of 2; residual branches are
    # damped so that six stacked ResBlock2d's do not blow the activations up.
    jacobian_convs, head_convs, residual_convs = set(), set(), set()
    for m in module.modules():
        if isinstance(m, KPDetector):
            head_convs.add(id(m.kp))
            if m.jacobian is not None:
                jacobian_convs.add(id(m.jacobian))
        elif isinstance(m, DenseMotionNetwork):
            head_convs.update(id(c) for c in (m.mask, m.occlusion) if c is not None)
        elif isinstance(m, OcclusionAwareGenerator):
            head_convs.add(id(m.final))
        elif isinstance(m, Discriminator):
            head_convs.add(id(m.conv))
        elif isinstance(m, ResBlock2d):
            residual_convs.add(id(m.conv2))
    head_convs |= jacobian_convs

    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            sn = hasattr(m, "weight_orig")
            w = m.weight_orig if sn else m.weight
            fan_in = w.shape[1] * w.shape[2] * w.shape[3]
            gain = 1.0 if id(m) in head_convs else 2.0
            std = math.sqrt(gain / fan_in) * (_RESIDUAL_SCALE if id(m) in residual_convs else 1.0)
            w.copy_(normal(w.shape, std))
            if m.bias is not None:
                m.bias.copy_(uniform(m.bias.shape, -0.1, 0.1))
            if id(m) in jacobian_convs:
                w.mul_(_JACOBIAN_WEIGHT_SCALE)
                n_maps = m.bias.shape[0] // 4
                m.bias.add_(torch.tensor([1.0, 0.0, 0.0, 1.0] * n_maps))
            if sn:
                w_mat = w.reshape(w.shape[0], -1)
                u = F.normalize(normal(m.weight_u.shape, 1.0), dim=0)
                v = F.normalize(w_mat.t() @ u, dim=0)
                u = F.normalize(w_mat @ v, dim=0)
                m.weight_u.copy_(u)
                m.weight_v.copy_(v)
                # keep the cached `weight` attribute consistent with the new values
                m.weight = w / torch.dot(u, w_mat @ v)
        elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)):
            if m.weight is not None:
                m.weight.copy_(uniform(m.weight.shape, 0.5, 1.5))
                m.bias.copy_(uniform(m.bias.shape, -0.1, 0.1))
            if getattr(m, "running_mean", None) is not None:
                m.running_mean.copy_(uniform(m.running_mean.shape, -0.1, 0.1))
                m.running_var.copy_(uniform(m.running_var.shape, 0.5, 1.5))
        elif isinstance(m, nn.Linear):  # not used by FOMM; handled for completeness
            m.weight.copy_(normal(m.weight.shape, math.sqrt(1.0 / m.weight.shape[1])))
            if m.bias is not None:
                m.bias.copy_(uniform(m.bias.shape, -0.1, 0.1))
    return module
