"""Precise BatchNorm statistics (train/precise_bn.py): the exact mean of every call's batch
moments, recorded under the variables' own module paths."""

from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict

from configs import common
from maskrenderer_jax.models import layers
from maskrenderer_jax.models import maskrenderer as mr
from maskrenderer_jax.train import precise_bn

ROOT = Path(__file__).resolve().parents[1]


class _CalledTwice(nn.Module):
    @nn.compact
    def __call__(self, x):
        norm = layers.batch_norm(True, jnp.float32, "norm")
        return norm(x) + norm(3 * x + 1)


def test_a_batchnorm_called_twice_gets_the_mean_of_both_calls_moments():
    x = jax.random.normal(jax.random.key(0), (4, 5, 5, 2))
    variables = _CalledTwice().init(jax.random.key(1), x)
    # Running statistics far from the batch's: the moments must not depend on them.
    variables["batch_stats"] = {"norm": {"mean": jnp.full(2, 7.0), "var": jnp.full(2, 9.0)}}
    apply = lambda v, x: _CalledTwice().apply(v, x, mutable=["batch_stats"])  # noqa: E731
    sums = jax.jit(precise_bn.batch_moments(apply))(variables, x)
    flat = np.asarray(x).reshape(-1, 2)
    calls = (flat, 3 * flat + 1)
    expected = {
        ("norm", "mean"): np.mean([c.mean(0) for c in calls], axis=0),
        ("norm", "var"): np.mean([c.var(0, ddof=1) for c in calls], axis=0),  # torch: unbiased
    }
    assert set(sums) == set(expected)
    for key, (total, count) in sums.items():
        assert int(count) == 2
        np.testing.assert_allclose(total / count, expected[key], rtol=1e-5)


def test_the_inference_forward_records_every_batchnorm_under_its_own_path():
    """The keys are the generator side's batch_stats paths; the keypoint detector runs on the
    source and on the driving frame, the other networks once. (Traced only: no compile.)"""
    config = common.load_config(str(ROOT / "configs" / "tiny.py") + ":fomm")
    variables = jax.eval_shape(lambda: mr.init_variables(config.model, jax.random.key(0)))
    frame = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
    moments = precise_bn.batch_moments(precise_bn.inference_forward(config))
    counts = {}

    def record_counts(variables, batch):
        counts.update({key: count for key, (_, count) in moments(variables, batch, {}).items()})

    jax.eval_shape(record_counts, variables, {"source": frame, "driving": frame})
    assert set(counts) == set(flatten_dict(variables["batch_stats"]))
    assert {key[0]: count for key, count in counts.items()} == {"kp_detector": 2, "generator": 1}
