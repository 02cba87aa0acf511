"""Optimisers and schedules: Adam with FOMM's MultiStepLR, its milestones in steps (a run's
come from its RunPlan, train/run_plan.py)."""

from collections.abc import Sequence

import ml_collections
import optax


def learning_rate(optim: ml_collections.ConfigDict, milestones: Sequence[int]) -> optax.Schedule:
    """lr x gamma^(number of milestones passed), milestones in steps (FOMM's MultiStepLR)."""
    return optax.piecewise_constant_schedule(
        optim.learning_rate, {int(m): optim.gamma for m in milestones}
    )


def adam(
    optim: ml_collections.ConfigDict, milestones: Sequence[int]
) -> optax.GradientTransformation:
    """torch.optim.Adam(lr, betas=(b1, b2)) with eps 1e-8 outside the square root, as torch;
    the learning rate drops by optim.gamma at each of `milestones` (steps)."""
    return optax.adam(learning_rate(optim, milestones), b1=optim.b1, b2=optim.b2, eps=1e-8)
