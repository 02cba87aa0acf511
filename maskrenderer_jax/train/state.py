"""The training state of the GAN: one pytree, the unit of sharding and checkpointing."""

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax

from maskrenderer_jax.models import maskrenderer as mr
from maskrenderer_jax.train import optim


@flax.struct.dataclass
class GANState:
    """Everything a training run needs to continue exactly where it stopped.

    generator: params of the generator side {'kp_detector' (FFD), 'generator' (with its
      'dense_motion')}, which one optimiser trains (FOMM's three Adams share lr and betas,
      and Adam is per-parameter, so one is the same).
    discriminator: params of the multi-scale discriminator.
    generator_stats: BatchNorm running statistics of the generator side.
    discriminator_stats: the spectral-norm power-iteration vectors u, v.
    rng: raw uint32 key data; step t draws from fold_in(rng, t), so a resumed run draws the
      same numbers as an uninterrupted one.
    """

    step: jax.Array
    generator: Any
    discriminator: Any
    generator_stats: Any
    discriminator_stats: Any
    generator_opt: optax.OptState
    discriminator_opt: optax.OptState
    rng: jax.Array

    def step_key(self) -> jax.Array:
        return jax.random.fold_in(jax.random.wrap_key_data(self.rng), self.step)


def init_state(config: ml_collections.ConfigDict, seed: int) -> GANState:
    """A fresh GANState for `config.model` (flax's initialisers, FOMM's layouts), with the
    optimiser states of `optim.adam` (the step's, for both networks)."""
    # Adam's state (a step count and the moments) is the same whatever the milestones.
    tx = optim.adam(config.optim, milestones=())
    key_g, key_d, key_run = jax.random.split(jax.random.key(seed), 3)
    g_vars = mr.init_variables(config.model, key_g)
    d_vars = mr.init_discriminator_variables(config.model, key_d)
    return GANState(
        step=jnp.zeros((), jnp.int32),
        generator=g_vars["params"],
        discriminator=d_vars["params"],
        generator_stats=g_vars.get("batch_stats", {}),
        discriminator_stats=d_vars.get("batch_stats", {}),
        generator_opt=tx.init(g_vars["params"]),
        discriminator_opt=tx.init(d_vars["params"]),
        rng=jax.random.key_data(key_run),
    )
