"""The MaskRenderer graph: configs build, 3D inputs, multi-scale occlusion, bf16, bad input."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common, tiny
from maskrenderer_jax.models import dense_motion, layers
from maskrenderer_jax.models import maskrenderer as mr

CONFIGS = Path(__file__).parents[1] / "configs"
CONFIG_FILES = sorted(p.name for p in CONFIGS.glob("*.py") if p.stem not in ("__init__", "common"))


@pytest.mark.parametrize("path", CONFIG_FILES)
def test_every_config_builds_abstractly(path):
    config = common.load_config(str(CONFIGS / path))
    assert config.is_locked
    assert config.data.image_size == config.model.image_size  # the pipeline feeds the model
    variables = jax.eval_shape(lambda: mr.init_variables(config.model, jax.random.key(0)))
    disc = jax.eval_shape(lambda: mr.init_discriminator_variables(config.model, jax.random.key(0)))
    assert set(variables) == {"params", "batch_stats"}
    assert set(variables["params"]) == {"kp_detector", "generator"}
    assert jax.tree.leaves(disc["params"])
    out = jax.eval_shape(
        lambda v: mr.build_model(config.model).apply(
            v, **mr.example_inputs(config.model), train=False
        ),
        variables,
    )
    size = config.model.image_size
    assert out["prediction"].shape == (1, size, size, 3)
    assert out["kp_source"]["value"].shape == (1, config.model.num_kp, 2)


@pytest.mark.parametrize(
    ("arg", "fomm"), [("fomm", True), ("fomm=true", True), ("fomm=False", False), ("", False)]
)
def test_config_args_parse_booleans_strictly(arg, fomm):
    config = tiny.get_config(arg)
    assert (config.model.dense_motion.num_extra_motions == 0) == fomm  # plain FOMM: no 3D


def test_config_args_refuse_what_they_cannot_read():
    for arg, message in (
        ("fomm=maybe", "expected a boolean"),
        ("fom", "unknown config arg 'fom'"),
    ):
        with pytest.raises(ValueError, match=message):
            tiny.get_config(arg)


def test_maskrenderer_vox256_has_the_paper_structure():
    model = common.load_config(str(CONFIGS / "maskrenderer_vox256.py")).model
    variables = jax.eval_shape(lambda: mr.init_variables(model, jax.random.key(0)))
    params = variables["params"]
    dm = params["generator"]["dense_motion_network"]
    assert dm["mask"]["kernel"].shape[-1] == model.num_kp + 2  # eq. (4): K + background + 3D
    assert sorted(k for k in dm if k.startswith("occlusion")) == [
        f"occlusion_{i}" for i in range(4)
    ]
    assert "attention_0" in params["kp_detector"]["predictor"]["decoder"]
    assert "attention_0" in dm["hourglass"]["decoder"]
    out = jax.eval_shape(
        lambda v: mr.build_model(model).apply(v, **mr.example_inputs(model), train=False), variables
    )
    assert [m.shape[1] for m in out["occlusion_maps"]] == [256, 128, 64, 32]
    assert [f.shape[1] for f in out["warped_features"]] == [256, 128, 64, 32]


@pytest.fixture(scope="module")
def tiny_setup():
    config = tiny.get_config()
    variables = jax.jit(lambda rng: mr.init_variables(config.model, rng, 2))(jax.random.key(0))
    rng = np.random.default_rng(0)
    size = config.model.image_size
    grid = np.stack(np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size)), -1)
    inputs = {
        "source": rng.uniform(size=(2, size, size, 3)).astype(np.float32),
        "driving": rng.uniform(size=(2, size, size, 3)).astype(np.float32),
        "motion_3d": np.broadcast_to(grid + 0.05, (2, size, size, 2)).astype(np.float32),
        "coverage_3d": np.ones((2, size, size), np.float32),
        "rendered_3d": rng.uniform(size=(2, size, size, 3)).astype(np.float32),
    }
    return config, variables, inputs


def test_tiny_maskrenderer_forward_and_backward(tiny_setup):
    config, variables, inputs = tiny_setup
    model = mr.build_model(config.model)

    def loss(params):
        out, _ = model.apply(
            {**variables, "params": params}, **inputs, train=True, mutable=["batch_stats"]
        )
        return jnp.mean(jnp.abs(out["prediction"] - inputs["driving"])), out

    (value, out), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])
    size, k = config.model.image_size, config.model.num_kp
    assert out["mask"].shape == (2, size // 4, size // 4, k + 2)
    np.testing.assert_allclose(np.sum(out["mask"], -1), 1.0, atol=1e-5)
    assert [m.shape[1:] for m in out["occlusion_maps"]] == [(64, 64, 1), (32, 32, 1), (16, 16, 1)]
    for m in out["occlusion_maps"]:
        assert np.all((np.asarray(m) > 0) & (np.asarray(m) < 1))
    assert [f.shape[1] for f in out["warped_features"]] == [64, 32, 16]
    assert np.isfinite(value)
    leaves = jax.tree.leaves(grads)
    assert all(np.all(np.isfinite(g)) for g in leaves)
    # Every parameter takes part: no dead branch (3D inputs, CBAM, each occlusion head).
    flat = jax.tree_util.tree_flatten_with_path(grads)[0]
    dead = [jax.tree_util.keystr(p) for p, g in flat if not np.any(np.asarray(g))]
    assert not [d for d in dead if "jacobian" not in d], dead


def test_3d_motion_changes_the_deformation(tiny_setup):
    config, variables, inputs = tiny_setup
    model = mr.build_model(config.model)
    run = jax.jit(lambda x: model.apply(variables, **x, train=False))
    base = run(inputs)
    shifted = run({**inputs, "motion_3d": inputs["motion_3d"] + 0.2})
    assert not np.allclose(base["deformation"], shifted["deformation"])
    # Eq. (4): the deformation is the mask-weighted blend of background, keypoint and 3D motions.
    h = base["deformation"].shape[1]
    motions = jnp.concatenate(
        [
            dense_motion.sparse_motions(h, h, shifted["kp_driving"], shifted["kp_source"]),
            layers.resize_bilinear(inputs["motion_3d"] + 0.2, h, h)[:, None],
        ],
        axis=1,
    )
    expected = jnp.einsum("bhwm,bmhwc->bhwc", shifted["mask"], motions)
    np.testing.assert_allclose(shifted["deformation"], expected, atol=1e-5)


def test_bfloat16_compute_runs_and_stays_close(tiny_setup):
    config, variables, inputs = tiny_setup
    with config.unlocked():
        config.model.dtype = "bfloat16"
    model = mr.build_model(config.model)
    out = jax.jit(lambda v: model.apply(v, **inputs, train=False))(variables)
    with config.unlocked():
        config.model.dtype = "float32"
    ref = jax.jit(lambda v: mr.build_model(config.model).apply(v, **inputs, train=False))(variables)
    assert out["prediction"].dtype == jnp.float32  # outputs and heads stay float32
    assert out["warped_features"][0].dtype == jnp.bfloat16
    assert np.all(np.isfinite(out["prediction"]))
    np.testing.assert_allclose(out["prediction"], ref["prediction"], atol=0.1)
    np.testing.assert_allclose(out["kp_source"]["value"], ref["kp_source"]["value"], atol=0.05)


def test_bad_inputs_raise_clear_errors(tiny_setup):
    config, variables, inputs = tiny_setup
    model = mr.build_model(config.model)
    # Shape errors surface while tracing: eval_shape checks them without running the network.
    trace = lambda m, v, **x: jax.eval_shape(lambda: m.apply(v, **x, train=False))
    with pytest.raises(ValueError, match=r"source must be \[B, H, W, 3\]"):
        trace(model, variables, **{**inputs, "source": inputs["source"][0]})
    with pytest.raises(ValueError, match=r"driving must be \[B, H, W, 3\].*\(2, 64, 64, 4\)"):
        trace(model, variables, **{**inputs, "driving": np.zeros((2, 64, 64, 4), np.float32)})
    with pytest.raises(ValueError, match="configured with the 3D branch"):
        trace(model, variables, source=inputs["source"], driving=inputs["driving"])
    fomm_model = tiny.get_config("fomm").model
    with pytest.raises(ValueError, match="has no 3D inputs"):
        jax.eval_shape(
            lambda: mr.build_model(fomm_model).init(jax.random.key(0), **inputs, train=False)
        )
