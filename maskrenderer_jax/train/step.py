"""One training step of the GAN: the generator losses (eqs. (5)-(11)), the discriminator loss
(eq. (12)) and both Adam updates, as one pure function of (state, batch, frozen).

Alternation, as FOMM's training loop: the generator forward runs once; its losses are taken
against the discriminator as it is at the start of the step, and the discriminator is trained
on `stop_gradient` of that same forward's prediction; both updates are applied at the end.
The spectral-norm vectors advance through the discriminator passes in FOMM's order (G step:
fake, real; D step: fake, real). With `loss.generator_gan` 0 (FOMM's vox-256), as FOMM, the
discriminator is neither run nor trained (`adversarial`).

The triplet loss needs a second generator pass (the source driven by a cross-identity frame).
`make_step_fn(config, plan, triplet=...)` builds either variant as Python control flow, so the
one without the cross pass computes none of it; the trainer compiles both and picks by step.
"""

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from maskrenderer_jax import losses
from maskrenderer_jax.face3d import recon_net
from maskrenderer_jax.face3d.branch import branch_inputs
from maskrenderer_jax.models import maskrenderer as mr
from maskrenderer_jax.nets import vgg16, vgg19, vggface2
from maskrenderer_jax.train import optim
from maskrenderer_jax.train.run_plan import RunPlan, adversarial
from maskrenderer_jax.train.state import GANState

# Batch fields the step reads (the rest of the pipeline's fields stay on the host).
IMAGE_KEYS = ("source", "driving", "cross_driving")
FLAG_KEYS = ("flipped", "cross_flipped")
COEFF_KEYS = ("source_coeffs", "driving_coeffs", "cross_coeffs")
# A batch may carry the equivariance warp FOMM's `Transform` draws (theta [B, 2, 3],
# control_params [B, 1, points_tps^2]); without them the step draws its own.
TRANSFORM_KEYS = ("theta", "control_params")
# The eq. (11) split: alpha * L_T + beta * (every other generator term).
TRIPLET = "triplet"


def step_inputs(batch: dict, config: ml_collections.ConfigDict) -> dict:
    """The subset of a pipeline batch that `make_step_fn`'s step reads."""
    keys = IMAGE_KEYS + FLAG_KEYS + tuple(k for k in TRANSFORM_KEYS if k in batch)
    if mr.build_model(config.model).uses_3d and config.face3d.coefficients == "batch":
        missing = [k for k in COEFF_KEYS if k not in batch]
        if missing:
            raise ValueError(
                f"face3d.coefficients='batch' but the batch has no {missing}: build the data "
                "set with --recon_variables, or set --config.face3d.coefficients=regressor"
            )
        keys += COEFF_KEYS
    return {k: batch[k] for k in keys}


def _face3d(config, frozen: dict, batch: dict, drivers: tuple[str, ...]) -> dict[str, dict]:
    """The 3D branch's inputs for the source driven by each of `drivers` ('driving',
    'cross'): {driver: branch_inputs(...)}."""
    frames = ("source", *drivers)
    if config.face3d.coefficients == "regressor":
        # One ReconNet pass over every frame involved. It sees the (possibly flipped) frames
        # themselves: nothing to unmirror.
        images = {"source": batch["source"], "driving": batch["driving"],
                  "cross": batch["cross_driving"]}  # fmt: skip
        x = recon_net.preprocess_fomm_crop(jnp.concatenate([images[f] for f in frames]))
        regressed = recon_net.ReconNet().apply(frozen["recon"], x, train=False)
        coeffs = dict(zip(frames, jnp.split(regressed, len(frames)), strict=True))
        flipped = dict.fromkeys(frames)
    else:
        coeffs = {f: batch[f"{f}_coeffs"] for f in frames}
        flipped = {"source": batch["flipped"], "driving": batch["flipped"],
                   "cross": batch["cross_flipped"]}  # fmt: skip
    return {
        d: branch_inputs(
            frozen["face_model"],
            coeffs["source"],
            coeffs[d],
            config.model.image_size,
            source_flipped=flipped["source"],
            driving_flipped=flipped[d],
        )
        for d in drivers
    }


def _discriminate(disc, params, stats, images, kp_value, scales):
    maps, mutated = disc.apply(
        {"params": params, "batch_stats": stats},
        losses.image_pyramid(images, scales),
        kp_value,
        train=True,
        mutable=["batch_stats"],
    )
    return maps, mutated["batch_stats"]


def perceptual_features(frozen: dict, dtype) -> Callable:
    """The perceptual loss's feature function: the network train/frozen.py loaded (its key)."""
    nets = {"vgg19": vgg19.Vgg19, "vgg16": vgg16.Vgg16}
    (name,) = (name for name in nets if name in frozen)
    return functools.partial(nets[name](dtype=dtype).apply, frozen[name])


def equivariance_transform(
    config: ml_collections.ConfigDict, batch: dict, rng: jax.Array
) -> losses.TPSTransform | None:
    """The equivariance terms' random warp: the batch's `TRANSFORM_KEYS` when it carries them
    (a probe or a comparison feeding FOMM's draws), else drawn from `rng` as FOMM's Transform
    draws; None when the config has no equivariance term."""
    loss = config.loss
    if not (loss.equivariance_value or loss.equivariance_jacobian):
        return None
    if "theta" in batch:
        return losses.tps_transform(batch["theta"], batch.get("control_params"))
    return losses.random_tps_transform(rng, batch["driving"].shape[0], **loss.transform)


def generator_losses(
    config: ml_collections.ConfigDict,
    *,
    triplet: bool,
    g_params,
    g_stats,
    d_params,
    d_stats,
    batch: dict,
    frozen: dict,
    transform: losses.TPSTransform | None,
) -> tuple[dict, dict]:
    """Every generator term (weighted within itself as FOMM; eq. (11)'s alpha/beta not yet).

    `transform`: the equivariance warp (`equivariance_transform`), None without those terms.

    Returns:
      (terms {name: scalar float32}, aux {'g_stats', 'd_stats', 'prediction', 'kp_driving'}).
    """
    loss = config.loss
    model = mr.build_model(config.model)
    disc = mr.build_discriminator(config.model)
    scales = tuple(config.model.discriminator.scales)
    source, driving = batch["source"], batch["driving"]
    g_vars = {"params": g_params, "batch_stats": g_stats}

    def run(method, *args, **kwargs):
        nonlocal g_vars
        out, mutated = model.apply(g_vars, *args, method=method, mutable=["batch_stats"], **kwargs)
        g_vars = {"params": g_params, "batch_stats": mutated["batch_stats"]}
        return out

    drivers = ("driving", "cross") if triplet else ("driving",)
    inputs_3d = _face3d(config, frozen, batch, drivers) if model.uses_3d else {}
    out = run(mr.MaskRenderer.__call__, source, driving, **inputs_3d.get("driving", {}), train=True)
    prediction = out["prediction"]
    terms = {}

    dtype = mr.DTYPES[config.model.dtype]  # the frozen nets compute in the model's dtype
    if any(loss.perceptual):
        features = perceptual_features(frozen, dtype)
        terms["perceptual"] = losses.perceptual_loss(
            features, prediction, driving, loss.pyramid_scales, loss.perceptual
        )
    if loss.reconstruction:
        terms["reconstruction"] = loss.reconstruction * losses.reconstruction_loss(
            prediction, driving
        )

    kp_d = jax.lax.stop_gradient(out["kp_driving"]["value"])
    kp_disc = kp_d if config.model.discriminator.use_kp else None
    if adversarial(config):
        maps_fake, d_stats = _discriminate(disc, d_params, d_stats, prediction, kp_disc, scales)
        maps_real, d_stats = _discriminate(disc, d_params, d_stats, driving, kp_disc, scales)
        terms["generator_gan"] = loss.generator_gan * losses.generator_gan_loss(maps_fake)
        if any(loss.feature_matching):
            terms["feature_matching"] = losses.feature_matching_loss(
                maps_real, maps_fake, loss.feature_matching
            )

    if transform is not None:
        kp_t = run(mr.MaskRenderer.detect, transform.transform_frame(driving), train=True)
        eq = losses.equivariance_losses(out["kp_driving"], kp_t, transform)
        if loss.equivariance_value:
            terms["equivariance_value"] = loss.equivariance_value * eq["equivariance_value"]
        if loss.equivariance_jacobian and "equivariance_jacobian" in eq:
            terms["equivariance_jacobian"] = (
                loss.equivariance_jacobian * eq["equivariance_jacobian"]
            )

    if loss.warping:
        driving_features = run(lambda m, x: m.generator.encode(x, train=True), driving)
        terms["warping"] = loss.warping * losses.warping_loss(
            out["warped_features"], driving_features, out.get("occlusion_maps")
        )

    if triplet:
        cross = batch["cross_driving"]
        cross_3d = inputs_3d.get("cross", {})

        def cross_pass(m, source, kp_source, cross):
            kp_cross = m.detect(cross, train=True)
            return m.animate(source, kp_source, kp_cross, **cross_3d, train=True)

        cross_out = run(cross_pass, source, out["kp_source"], cross)

        def embed(images):
            net = vggface2.VGGFace2(dtype=dtype)
            return net.apply(
                frozen["vggface2"],
                images,
                crop=loss.triplet.crop,
                size=loss.triplet.input_size,
                method=vggface2.VGGFace2.embed,
            )

        terms[TRIPLET] = losses.identity_triplet_loss(
            embed,
            source,
            prediction,
            cross_out["prediction"],
            cross,
            alpha=loss.triplet.alpha,
            margin=loss.triplet.margin,
        )

    aux = {
        "g_stats": g_vars["batch_stats"],
        "d_stats": d_stats,
        "prediction": prediction,
        "kp_driving": kp_d,
    }
    return terms, aux


def total_generator_loss(terms: dict, loss: ml_collections.ConfigDict) -> jax.Array:
    """Eq. (11): alpha * L_T + beta * (sum of the other terms)."""
    rest = sum((v for k, v in terms.items() if k != TRIPLET), jnp.zeros((), jnp.float32))
    total = loss.beta * rest
    if TRIPLET in terms:
        total = total + loss.alpha * terms[TRIPLET]
    return total


def generator_gradients(
    config: ml_collections.ConfigDict,
    *,
    triplet: bool,
    g_params,
    g_stats,
    d_params,
    d_stats,
    batch: dict,
    frozen: dict,
    transform: losses.TPSTransform | None,
):
    """The generator side's objective (eq. (11)) and its gradient w.r.t. `g_params`, BatchNorm
    in train mode: ((total, (terms, aux)), grads), `generator_losses`' terms and aux."""

    def objective(g_params):
        terms, aux = generator_losses(
            config, triplet=triplet, g_params=g_params, g_stats=g_stats, d_params=d_params,
            d_stats=d_stats, batch=batch, frozen=frozen, transform=transform,
        )  # fmt: skip
        return total_generator_loss(terms, config.loss), (terms, aux)

    return jax.value_and_grad(objective, has_aux=True)(g_params)


def discriminator_loss(config, d_params, d_stats, driving, prediction, kp_driving):
    """Eq. (12), FOMM's DiscriminatorFullModel: LSGAN on the real driving frame and the
    stop-gradient prediction. Returns (loss, new spectral-norm stats)."""
    disc = mr.build_discriminator(config.model)
    scales = tuple(config.model.discriminator.scales)
    kp = kp_driving if config.model.discriminator.use_kp else None
    fake = jax.lax.stop_gradient(prediction)
    maps_fake, d_stats = _discriminate(disc, d_params, d_stats, fake, kp, scales)
    maps_real, d_stats = _discriminate(disc, d_params, d_stats, driving, kp, scales)
    value = config.loss.discriminator_gan * losses.discriminator_gan_loss(maps_real, maps_fake)
    return value, d_stats


def gradient_norms(g_grads, d_grads=None) -> dict:
    """Global L2 norms per network: FFD, dense motion, generator (without dense motion), D."""
    generator = dict(g_grads["generator"])
    dense = generator.pop("dense_motion_network")
    norms = {
        "grad_norm/kp_detector": optax.tree.norm(g_grads["kp_detector"]),
        "grad_norm/dense_motion": optax.tree.norm(dense),
        "grad_norm/generator": optax.tree.norm(generator),
    }
    if d_grads is not None:
        norms["grad_norm/discriminator"] = optax.tree.norm(d_grads)
    return norms


def make_step_fn(
    config: ml_collections.ConfigDict, plan: RunPlan, *, triplet: bool
) -> Callable[[GANState, dict, dict], tuple[GANState, dict]]:
    """The pure step (state, batch, frozen) -> (state, metrics) of one triplet phase, with
    `optim.adam(config.optim, plan.milestones)` for both networks (FOMM: same lr, betas and
    milestones).

    metrics: every generator term present, 'generator' (eq. (11) total), 'discriminator'
    (when `adversarial`), the gradient norms and 'learning_rate', all float32 scalars.
    """

    generator_tx = discriminator_tx = optim.adam(config.optim, plan.milestones)
    schedule = optim.learning_rate(config.optim, plan.milestones)

    def step(state: GANState, batch: dict, frozen: dict):
        (g_total, (terms, aux)), g_grads = generator_gradients(
            config,
            triplet=triplet,
            g_params=state.generator,
            g_stats=state.generator_stats,
            d_params=state.discriminator,
            d_stats=state.discriminator_stats,
            batch=batch,
            frozen=frozen,
            transform=equivariance_transform(config, batch, state.step_key()),
        )

        g_updates, g_opt = generator_tx.update(g_grads, state.generator_opt, state.generator)
        new_state = state.replace(
            step=state.step + 1,
            generator=optax.apply_updates(state.generator, g_updates),
            generator_stats=aux["g_stats"],
            generator_opt=g_opt,
        )
        metrics = {**terms, "generator": g_total}
        d_grads = None
        if adversarial(config):

            def d_objective(d_params):
                return discriminator_loss(
                    config, d_params, aux["d_stats"], batch["driving"], aux["prediction"],
                    aux["kp_driving"],
                )  # fmt: skip

            (d_total, d_stats), d_grads = jax.value_and_grad(d_objective, has_aux=True)(
                state.discriminator
            )
            d_updates, d_opt = discriminator_tx.update(
                d_grads, state.discriminator_opt, state.discriminator
            )
            new_state = new_state.replace(
                discriminator=optax.apply_updates(state.discriminator, d_updates),
                discriminator_stats=d_stats,
                discriminator_opt=d_opt,
            )
            metrics["discriminator"] = d_total
        metrics.update(gradient_norms(g_grads, d_grads))
        metrics["learning_rate"] = jnp.asarray(schedule(state.step), jnp.float32)
        return new_state, metrics

    return step


def reenact_batch(config, variables: dict, batch: dict, frozen: dict, **apply_kwargs):
    """The inference forward (`MaskRenderer.__call__`) on a step's batch, its source driven by
    its driving frame: (model.apply's output, the 3D branch's inputs, {} without the branch).
    `apply_kwargs`: `train` and the like, passed to model.apply."""
    model = mr.build_model(config.model)
    inputs_3d = _face3d(config, frozen, batch, ("driving",))["driving"] if model.uses_3d else {}
    out = model.apply(variables, batch["source"], batch["driving"], **inputs_3d, **apply_kwargs)
    return out, inputs_3d


def make_preview_fn(config: ml_collections.ConfigDict) -> Callable[[GANState, dict, dict], list]:
    """(state, batch, frozen) -> the log grid's rows, top to bottom, inference-mode forward:
    source, driving, prediction, occlusion masks (each resized to the image), the rendered 3D
    face. A list, because a jitted dict comes back with its keys sorted."""
    size = config.model.image_size

    def preview(state: GANState, batch: dict, frozen: dict) -> list[jax.Array]:
        variables = {"params": state.generator, "batch_stats": state.generator_stats}
        out, inputs_3d = reenact_batch(config, variables, batch, frozen, train=False)
        rows = [batch["source"], batch["driving"], out["prediction"].astype(jnp.float32)]
        for occlusion in out.get("occlusion_maps") or ():
            shape = (occlusion.shape[0], size, size, 3)
            rows.append(jax.image.resize(occlusion.astype(jnp.float32), shape, "nearest"))
        if inputs_3d:  # {} without the 3D branch
            rows.append(inputs_3d["rendered_3d"])
        return rows

    return preview
