"""Precise BatchNorm statistics: every BatchNorm's running mean and variance of the generator
side re-estimated with the final weights (detectron2's PreciseBN; Wu & Johnson 2021,
"Rethinking 'Batch' in BatchNorm", section 3).

During training a running statistic is an exponential average (torch's momentum 0.1) over
the last ~10 calls, each from a small batch taken with earlier weights: at batch 4 it follows
the last few batches, and the held-out result moves with them. Here the weights are fixed and
each BatchNorm's statistics are the plain mean, over `num_batches` training batches, of the
batch mean and unbiased batch variance of every call it gets in the inference forward
(`MaskRenderer.__call__`: the keypoint detector runs on the source and on the driving frame,
so it averages both), with batch statistics normalising as in training. A BatchNorm the
forward does not call keeps its statistics.

    state = precise_bn.recompute(trainer, state, iterator, num_batches=200)
"""

import logging
from collections.abc import Callable, Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from flax.traverse_util import flatten_dict, unflatten_dict

from maskrenderer_jax.models import layers
from maskrenderer_jax.train.state import GANState
from maskrenderer_jax.train.step import reenact_batch
from maskrenderer_jax.train.trainer import Trainer

STATS = ("mean", "var")


def batch_moments(apply: Callable[..., Any]) -> Callable[..., dict]:
    """`apply(*args)`: a flax `apply` with BatchNorm in training mode and 'batch_stats'
    mutable. Returns f(*args) -> {(module path..., 'mean'|'var'): (the sum over the
    BatchNorm's calls in that apply of its batch mean or unbiased batch variance, the number
    of calls)}.

    A call's moments are read from its own running-statistic update: started from zero, the
    update is (1 - momentum) x (batch mean, unbiased batch variance)."""

    def moments(*apply_args) -> dict:
        sums = {}

        def record(next_fun, args, kwargs, context):
            module = context.module
            if not (isinstance(module, layers.BatchNorm) and context.method_name == "__call__"):
                return next_fun(*args, **kwargs)
            for name in STATS:
                zero = jnp.zeros_like(module.get_variable("batch_stats", name))
                module.put_variable("batch_stats", name, zero)
            out = next_fun(*args, **kwargs)
            for name in STATS:
                key = (*module.scope.path, name)
                total, count = sums.get(key, (0.0, 0))
                moment = module.get_variable("batch_stats", name) / (1 - module.momentum)
                sums[key] = (total + moment, count + 1)
            return out

        with nn.intercept_methods(record):
            apply(*apply_args)
        return sums

    return moments


def inference_forward(config: ml_collections.ConfigDict) -> Callable[[dict, dict, dict], Any]:
    """(variables, batch, frozen) -> the inference forward (`MaskRenderer.__call__`, source
    driven by driving) in training mode, on a step's device batch."""

    def forward(variables: dict, batch: dict, frozen: dict):
        return reenact_batch(config, variables, batch, frozen, train=True,
                             mutable=["batch_stats"])[0]  # fmt: skip

    return forward


def recompute(
    trainer: Trainer, state: GANState, batches: Iterator[dict], num_batches: int
) -> GANState:
    """`state` with the generator side's BatchNorm statistics re-estimated over the next
    `num_batches` of `batches` (this process's numpy batches, as the training loop's)."""
    moments = jax.jit(batch_moments(inference_forward(trainer.config)))
    variables = {"params": state.generator, "batch_stats": state.generator_stats}
    totals = None
    for _ in range(num_batches):
        sums = moments(variables, trainer.device_batch(next(batches)), trainer.frozen)
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    stats = flatten_dict(state.generator_stats)
    for key, (total, count) in (totals or {}).items():
        stats[key] = total / count
    logging.info("precise BatchNorm: %d statistics re-estimated over %d batches",
                 len(totals or {}), num_batches)  # fmt: skip
    stats = jax.device_put(unflatten_dict(stats), trainer.state_shardings.generator_stats)
    return state.replace(generator_stats=stats)
