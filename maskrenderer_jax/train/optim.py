"""Optimisers and schedules: Adam with FOMM's MultiStepLR, and epoch-based schedule values
resolved into steps once the data set's epoch length is known."""

import ml_collections
import optax


def resolve_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int) -> None:
    """Fills the step-based schedule keys left at their 'derive' values from the epoch-based
    ones, in place: train.num_steps, optim.milestones, loss.triplet_start_step.

    FOMM counts epochs of identities x num_repeats samples; `steps_per_epoch` is that over the
    global batch.
    """
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
    if config.train.num_steps < 0:
        config.train.num_steps = config.train.num_epochs * steps_per_epoch
    if not config.optim.milestones:
        config.optim.milestones = tuple(e * steps_per_epoch for e in config.optim.epoch_milestones)
    if config.loss.triplet_start_step < 0 and config.loss.triplet_start_epoch >= 0:
        config.loss.triplet_start_step = config.loss.triplet_start_epoch * steps_per_epoch


def learning_rate(optim: ml_collections.ConfigDict) -> optax.Schedule:
    """lr x gamma^(number of milestones passed), milestones in steps (FOMM's MultiStepLR)."""
    return optax.piecewise_constant_schedule(
        optim.learning_rate, {int(m): optim.gamma for m in optim.milestones}
    )


def adam(optim: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """torch.optim.Adam(lr, betas=(b1, b2)) with eps 1e-8 outside the square root, as torch."""
    return optax.adam(learning_rate(optim), b1=optim.b1, b2=optim.b2, eps=1e-8)
