"""Frozen backbones without their converted pretrained weights: the one warning, and random
variables distributed as flax's defaults without running a network's initialisers."""

import logging
import math

import jax
import jax.numpy as jnp
import numpy as np

# The standard deviation of a standard normal truncated to [-2, 2] (flax's variance_scaling).
_TRUNCATED_STD = 0.87962566103423978


def warn_random_weights(name: str, converter: str, consequence: str) -> str:
    """Logs (logging.WARNING) and returns the message that `name` runs on random weights."""
    message = (
        f"{name} has RANDOM weights (none were converted; see `python -m {converter}`): "
        f"{consequence}"
    )
    logging.warning(message)
    return message


def flax_default_variables(abstract: dict, rng: jax.Array) -> dict:
    """Random variables shaped like `abstract` (ShapeDtypeStructs, e.g. from
    `jax.eval_shape(model.init, ...)`), distributed as flax's defaults: kernels LeCun normal
    (truncated normal, std sqrt(1 / fan_in) / 0.8796), biases 0, BatchNorm scale 1, mean 0,
    var 1.

    All kernels come from one truncated-normal draw sliced per leaf: a deep network's `init`
    runs one initialiser per layer, which takes tens of seconds to compile (or dispatch) on
    a 2-core CPU; one draw takes about one.
    """
    leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract)
    total = sum(math.prod(leaf.shape) for path, leaf in leaves if path[-1].key == "kernel")
    noise = np.asarray(jax.random.truncated_normal(rng, -2.0, 2.0, (total,)), np.float32)
    values, offset = [], 0
    for path, leaf in leaves:
        name = path[-1].key
        if name == "kernel":
            size, fan_in = math.prod(leaf.shape), math.prod(leaf.shape[:-1])
            value = noise[offset : offset + size].reshape(leaf.shape)
            value = value * (np.sqrt(1.0 / fan_in) / _TRUNCATED_STD)
            offset += size
        else:
            value = np.full(leaf.shape, 1.0 if name in ("scale", "var") else 0.0)
        values.append(jnp.asarray(value, leaf.dtype))
    return jax.tree_util.tree_unflatten(treedef, values)
