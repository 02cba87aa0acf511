"""FOMM's training step in torch: first-order-model's GeneratorFullModel and
DiscriminatorFullModel (modules/model.py) with train.py's update order, on the networks of
converters.maskrenderer_torch, with the mirrors in this folder (losses_torch losses, vgg_torch
VGG19). NCHW, float32.

As FOMM, the discriminator (the GAN and feature-matching terms, and its own update) runs only
when `generator_gan != 0`; vox-256 (weight 0) trains without it.
"""

import numpy as np
import torch

from tests import vgg_torch
from tests.losses_torch import (
    ImagePyramide,
    Transform,
    discriminator_gan_loss,
    equivariance_losses,
    feature_matching_loss,
    generator_gan_loss,
    perceptual_loss,
)


class FommTrainStep:
    """`step(source, driving)` = one training step on NCHW batches; returns the loss values
    under FOMM's names (perceptual, gen_gan, feature_matching, equivariance_value,
    equivariance_jacobian, disc_gan). `probe` = one step's losses, gradients and BatchNorm
    statistics without the updates.

    nets: (kp_detector, generator, discriminator) from torch_utils.random_fomm (put in train
    mode here); loss / optim: a config's `loss` and `optim` sections (attribute access).
    """

    def __init__(self, nets, loss, optim, vgg: vgg_torch.VGG19 | None = None, seed: int = 0):
        self.kp_detector, self.generator, self.discriminator = nets
        for net in nets:
            net.train()
        self.loss = loss
        self.disc_scales = list(self.discriminator.scales)
        self.pyramid = ImagePyramide(loss.pyramid_scales, 3)  # the perceptual loss's
        self.disc_pyramid = ImagePyramide(self.disc_scales, 3)  # DiscriminatorFullModel's
        self.vgg = (vgg or vgg_torch.VGG19()).eval().requires_grad_(False)
        self.rng = torch.Generator().manual_seed(seed)

        def adam(net):
            return torch.optim.Adam(
                net.parameters(), lr=optim.learning_rate, betas=(optim.b1, optim.b2)
            )

        self.opt_kp, self.opt_gen, self.opt_disc = (adam(net) for net in nets)

    def _discriminate(self, image, kp_driving):
        kp = {k: v.detach() for k, v in kp_driving.items()}
        return self.discriminator(self.disc_pyramid(image), kp=kp)

    def random_transform(self, batch: int) -> Transform:
        """FOMM's Transform(bs, sigma_affine, sigma_tps, points_tps), drawn from self.rng."""
        t = self.loss.transform
        noise = torch.randn((batch, 2, 3), generator=self.rng) * t.sigma_affine
        theta = noise + torch.eye(2, 3).view(1, 2, 3)
        control = torch.randn((batch, 1, t.points_tps**2), generator=self.rng) * t.sigma_tps
        return Transform(theta, control, t.points_tps)

    def generator_losses(self, source, driving, transform=None) -> tuple[dict, dict]:
        """GeneratorFullModel.forward: (weighted loss terms, generated). `transform`: the
        equivariance warp, drawn as FOMM's Transform draws it when None."""
        loss, terms = self.loss, {}
        kp_source, kp_driving = self.kp_detector(source), self.kp_detector(driving)
        generated = self.generator(source, kp_source=kp_source, kp_driving=kp_driving)
        generated.update(kp_source=kp_source, kp_driving=kp_driving)
        prediction = generated["prediction"]

        if any(loss.perceptual):
            terms["perceptual"] = perceptual_loss(
                lambda x: vgg_torch.fomm_vgg19_features(self.vgg, x),
                self.pyramid,
                prediction,
                driving,
                loss.pyramid_scales,
                loss.perceptual,
            )
        if loss.generator_gan:
            maps_fake = self._discriminate(prediction, kp_driving)
            maps_real = self._discriminate(driving, kp_driving)
            gan = generator_gan_loss(maps_fake, self.disc_scales)
            terms["gen_gan"] = loss.generator_gan * gan
            if any(loss.feature_matching):
                terms["feature_matching"] = feature_matching_loss(
                    maps_real, maps_fake, self.disc_scales, loss.feature_matching
                )
        if loss.equivariance_value or loss.equivariance_jacobian:
            transform = transform or self.random_transform(driving.shape[0])
            transformed_kp = self.kp_detector(transform.transform_frame(driving))
            value, jacobian = equivariance_losses(kp_driving, transformed_kp, transform)
            if loss.equivariance_value:  # FOMM reports only the terms it weighs
                terms["equivariance_value"] = loss.equivariance_value * value
            if loss.equivariance_jacobian:
                terms["equivariance_jacobian"] = loss.equivariance_jacobian * jacobian
        return terms, generated

    def _discriminator_loss(self, driving, generated):
        """DiscriminatorFullModel.forward: the weighted disc_gan term."""
        maps_fake = self._discriminate(generated["prediction"].detach(), generated["kp_driving"])
        maps_real = self._discriminate(driving, generated["kp_driving"])
        return self.loss.discriminator_gan * discriminator_gan_loss(
            maps_real, maps_fake, self.disc_scales
        )

    def step(
        self, source: torch.Tensor, driving: torch.Tensor, transform: Transform | None = None
    ) -> dict[str, float]:
        """train.py's loop body: generator + kp detector update, then the discriminator's."""
        terms, generated = self.generator_losses(source, driving, transform)
        sum(terms.values()).backward()
        self.opt_gen.step()
        self.opt_gen.zero_grad()
        self.opt_kp.step()
        self.opt_kp.zero_grad()
        values = {k: v.item() for k, v in terms.items()}
        if not self.loss.generator_gan:
            return values

        self.opt_disc.zero_grad()  # drops the feature-matching gradients, as FOMM
        disc = self._discriminator_loss(driving, generated)
        disc.backward()
        self.opt_disc.step()
        self.opt_disc.zero_grad()
        return {**values, "disc_gan": disc.item()}

    def probe(self, source, driving, transform: Transform) -> dict[str, np.ndarray]:
        """One step's forward and generator backward, no update, as converters/fomm_step.py
        writes it: loss/<name>, grad/{kp_detector,generator}/<key> (of the sum of the
        generator's terms), state/{kp_detector,generator}/<key> (BatchNorm running_mean and
        running_var after the forward). The networks' gradients are left set."""
        for net in (self.kp_detector, self.generator):
            net.zero_grad()
        terms, generated = self.generator_losses(source, driving, transform)
        sum(terms.values()).backward()
        out = {f"loss/{k}": v.detach().numpy() for k, v in terms.items()}
        if self.loss.generator_gan:
            with torch.no_grad():
                out["loss/disc_gan"] = self._discriminator_loss(driving, generated).numpy()
        for name, net in (("kp_detector", self.kp_detector), ("generator", self.generator)):
            for key, param in net.named_parameters():
                grad = param.grad if param.grad is not None else torch.zeros_like(param)
                out[f"grad/{name}/{key}"] = grad.numpy().copy()
            for key, buffer in net.state_dict().items():
                if key.endswith(("running_mean", "running_var")):
                    out[f"state/{name}/{key}"] = buffer.numpy().copy()
        return out
