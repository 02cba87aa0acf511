"""converters.export and converters.maskrenderer_torch: exact round trips (safetensors, npz),
bf16 exports, the PyTorch networks against ours to 1e-4 (random and trained weights, FOMM and
MaskRenderer, the discriminator), and files that do not fit: one error listing everything."""

import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import tiny
from converters import export, export_format, torch_layout
from converters import maskrenderer_torch as mt
from maskrenderer_jax import params_io
from maskrenderer_jax.cli_errors import UserError
from maskrenderer_jax.models import maskrenderer as mr
from maskrenderer_jax.train import checkpoint
from maskrenderer_jax.train.state import init_state
from tests import torch_utils

ALL = "kp_detector,generator,discriminator"


def random_networks(model_config, seed=0) -> dict:
    """{'model', 'discriminator'} variables with the torch networks' random weights (well
    scaled, non-identity jacobians, random BatchNorm statistics), imported through export."""
    model, disc = mt.build(model_config.to_dict())
    torch_utils.randomize_(model, seed)
    torch_utils.randomize_(disc, seed + 1)
    tensors = {k: v.numpy() for k, v in model.state_dict().items()}
    tensors.update({f"discriminator.{k}": v.numpy() for k, v in disc.state_dict().items()})
    metadata = {"config": model_config.to_json_best_effort(), "networks": ALL}
    return export.import_tensors(tensors, metadata, "torch")[0]


@pytest.fixture(scope="module")
def tiny_mr():
    model_config = tiny.get_config().model
    return model_config, random_networks(model_config)


def flat(tree) -> dict:
    return dict(torch_layout._flatten(tree))


def assert_trees_equal(a, b):
    a, b = flat(a), flat(b)
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        np.testing.assert_array_equal(a[key], b[key], err_msg=str(key))


def write(path, networks, model_config, file_format="safetensors", dtype="float32"):
    tensors = export.export_tensors(networks, model_config, dtype)
    export_format.write_export(
        path, tensors, export.export_metadata(networks, model_config), file_format
    )


@pytest.mark.parametrize("file_format", ["safetensors", "npz"])
def test_export_imports_back_bit_for_bit(tiny_mr, tmp_path, file_format):
    model_config, networks = tiny_mr
    path = tmp_path / f"model.{file_format}"
    write(path, networks, model_config, file_format)
    tensors, metadata = export_format.read_export(path)
    assert json.loads(metadata["config"]) == json.loads(model_config.to_json_best_effort())
    assert metadata["networks"] == ALL
    assert {k.split(".")[0] for k in tensors} == set(ALL.split(","))
    # FOMM's names for FOMM's parts, the torch modules' for the rest.
    assert "kp_detector.predictor.encoder.down_blocks.0.conv.weight" in tensors
    assert "generator.dense_motion_network.hourglass.decoder.attention.0.fc1.weight" in tensors
    assert "generator.dense_motion_network.occlusion.2.weight" in tensors
    assert "discriminator.discs.1.down_blocks.0.conv.weight_orig" in tensors
    again, config = export.import_tensors(tensors, metadata, str(path))
    assert config.to_json_best_effort() == model_config.to_json_best_effort()
    assert_trees_equal(networks, again)


def test_cli_exports_variables_and_imports_them_back(tiny_mr, tmp_path, capsys):
    model_config, networks = tiny_mr
    params_io.save_variables(tmp_path / "vars", networks)
    out = tmp_path / "model.safetensors"
    export.main(["--variables", str(tmp_path / "vars"), "--config", "configs/tiny.py",
                 "--out", str(out)])  # fmt: skip
    assert f"to {out}" in capsys.readouterr().out
    export.main(["--safetensors", str(out), "--out", str(tmp_path / "back"),
                 "--config", "configs/tiny.py"])  # fmt: skip
    assert_trees_equal(networks, params_io.load_variables(tmp_path / "back"))


def test_bfloat16_export_rounds_to_bfloat16_only(tiny_mr, tmp_path):
    model_config, networks = tiny_mr
    path = tmp_path / "model.safetensors"
    write(path, networks, model_config, dtype="bfloat16")
    tensors, metadata = export_format.read_export(path)
    dtypes = {k: v.dtype.name for k, v in tensors.items()}
    fixed = {k for k in tensors if k.endswith("down.weight")}  # the anti-alias constants
    assert {dtypes[k] for k in fixed} == {"float32"} and len(fixed) == 2
    assert {v for k, v in dtypes.items() if k.endswith("num_batches_tracked")} == {"int64"}
    assert {v for k, v in dtypes.items() if k not in fixed and "num_batches" not in k} == {
        "bfloat16"
    }
    assert path.stat().st_size < 0.6 * sum(v.nbytes * 2 for v in tensors.values())
    again, _ = export.import_tensors(tensors, metadata, str(path))
    original, rounded = flat(networks), flat(again)
    for key, value in original.items():
        assert rounded[key].dtype == np.float32, key
        # bf16 keeps 8 significant bits: relative rounding error at most 2^-9.
        np.testing.assert_allclose(rounded[key], value, rtol=2**-8, atol=1e-30, err_msg=str(key))
    assert any(not np.array_equal(rounded[k], v) for k, v in original.items())


@pytest.mark.parametrize("arg", ["", "fomm"])
def test_torch_networks_match_ours_on_random_weights(tmp_path, arg):
    model_config = tiny.get_config(arg).model
    networks = random_networks(model_config, seed=3)
    path = tmp_path / "model.safetensors"
    write(path, networks, model_config)
    differences = export.torch_differences(str(path))
    expected = {"prediction", "deformation", "mask", "deformed", "kp_driving.jacobian",
                "occlusion_maps.0", "discriminator.prediction_map_1"}  # fmt: skip
    assert expected <= set(differences)
    assert len([k for k in differences if k.startswith("occlusion")]) == (3 if not arg else 1)
    assert max(differences.values()) < export.PARITY_ATOL, differences
    exported = mt.load(path)
    assert exported.config == json.loads(model_config.to_json_best_effort())
    assert exported.model.uses_3d == (not arg)
    # Not degenerate: the prediction and the keypoints vary.
    inputs = export.probe_inputs(model_config)
    prediction = jax.jit(lambda v, x: mr.build_model(model_config).apply(v, **x, train=False))(
        networks["model"], inputs
    )
    assert np.std(prediction["prediction"]) > 1e-2
    assert np.std(prediction["kp_source"]["value"]) > 1e-2


@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory, tiny_mr):
    """A workdir whose checkpoint holds a tiny MaskRenderer's generator side trained 20 Adam
    steps (train-mode BatchNorm statistics) to reconstruct the driving frame of probe inputs,
    and a discriminator with power-iterated spectral-norm vectors."""
    model_config, networks = tiny_mr
    config = tiny.get_config()
    model = mr.build_model(model_config)
    inputs = export.probe_inputs(model_config, batch=4, seed=1)
    tx = optax.adam(1e-2)

    @jax.jit
    def step(params, stats, opt):
        def loss(p):
            out, updated = model.apply({"params": p, "batch_stats": stats}, **inputs, train=True,
                                       mutable=["batch_stats"])  # fmt: skip
            return jnp.mean(jnp.abs(out["prediction"] - inputs["driving"])), updated

        (value, updated), grads = jax.value_and_grad(loss, has_aux=True)(params)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), updated["batch_stats"], opt, value

    params, stats = networks["model"]["params"], networks["model"]["batch_stats"]
    opt = tx.init(params)
    losses = []
    for _ in range(20):
        params, stats, opt, value = step(params, stats, opt)
        losses.append(float(value))
    assert losses[-1] < losses[0]
    # The discriminator's spectral-norm vectors after 20 train-mode power iterations, as a run
    # leaves them (flax's initial u, v are random: sigma = u.W v would be far off).
    disc = mr.build_discriminator(model_config)
    assert tuple(disc.scales) == (1,)
    power = jax.jit(lambda v: disc.apply(v, {"prediction_1": inputs["driving"]}, train=True,
                                         mutable=["batch_stats"])[1])  # fmt: skip
    disc_variables = networks["discriminator"]
    for _ in range(20):
        disc_variables = {"params": disc_variables["params"], **power(disc_variables)}
    workdir = tmp_path_factory.mktemp("run")
    checkpoint.write_run_config(workdir, config)
    state = init_state(config, 0).replace(
        generator=params,
        generator_stats=stats,
        discriminator=disc_variables["params"],
        discriminator_stats=disc_variables["batch_stats"],
    )
    checkpoints = checkpoint.Checkpoints(workdir, config.checkpoint)
    checkpoints.save(20, state, force=True)
    checkpoints.wait()
    checkpoints.close()
    return workdir, {"model": {"params": params, "batch_stats": stats},
                     "discriminator": disc_variables}  # fmt: skip


def test_workdir_export_of_trained_weights_matches_in_torch(trained_workdir, tmp_path, capsys):
    workdir, trained = trained_workdir
    with pytest.raises(UserError, match="would overwrite the input"):
        export.main(["--workdir", str(workdir), "--out", str(workdir / "checkpoints" / "m.st")])
    out = workdir / "model.safetensors"  # beside the checkpoints, as `make demo` writes it
    export.main(["--workdir", str(workdir), "--out", str(out), "--check-torch"])
    printed = capsys.readouterr().out
    assert "step 20" in printed and "PyTorch vs JAX, max |difference|" in printed
    tensors, metadata = export_format.read_export(out)
    networks, _ = export.import_tensors(tensors, metadata, str(out))
    assert_trees_equal(jax.tree.map(np.asarray, trained), networks)
    held_out = export.probe_inputs(tiny.get_config().model, batch=3, seed=7)
    differences = export.torch_differences(str(out), held_out)
    assert max(differences.values()) < export.PARITY_ATOL, differences


def test_file_of_another_config_lists_every_difference(tiny_mr, tmp_path):
    fomm_config = tiny.get_config("fomm").model
    path = tmp_path / "fomm.safetensors"
    write(path, random_networks(fomm_config), fomm_config)
    with pytest.raises(torch_layout.ConversionError) as info:
        export.main(["--safetensors", str(path), "--config", "configs/tiny.py",
                     "--out", str(tmp_path / "vars")])  # fmt: skip
    message = str(info.value)
    assert message.startswith(f"{path} does not fit the model:")
    for line in ("config model.generator.skip_connections: False in the file, True now",
                 "config model.dense_motion.num_extra_motions: 0 in the file, 1 now",
                 "missing:", "dense_motion_network.mask.weight: checkpoint"):  # fmt: skip
        assert line in message, line
    assert not (tmp_path / "vars").exists()


def test_missing_extra_and_misshapen_tensors_are_one_error(tiny_mr, tmp_path):
    model_config, networks = tiny_mr
    tensors = export.export_tensors(networks, model_config)
    del tensors["generator.final.bias"]
    del tensors["discriminator.discs.1.conv.bias"]
    tensors["generator.extra.weight"] = np.zeros(3, np.float32)
    tensors["stray"] = np.zeros(1, np.float32)
    tensors["kp_detector.kp.weight"] = tensors["kp_detector.kp.weight"][:2]
    path = tmp_path / "bad.safetensors"
    export_format.write_export(path, tensors, export.export_metadata(networks, model_config),
                        "safetensors")  # fmt: skip
    with pytest.raises(torch_layout.ConversionError) as info:
        export.import_tensors(*export_format.read_export(path), str(path))
    message = str(info.value)
    for item in ("unexpected stray (no network 'stray')", "final.bias", "extra.weight",
                 "conv.bias", "kp.weight: checkpoint (2, "):  # fmt: skip
        assert item in message, item
    # The PyTorch loader: one error too, naming the file and every problem.
    with pytest.raises(ValueError) as info:
        mt.load(path)
    message = str(info.value)
    assert message.startswith(f"{path} does not fit the networks of its config (5 problems)")
    for item in ("missing generator.final.bias", "missing discriminator.discs.1.conv.bias",
                 "unexpected generator.extra.weight", "unexpected stray",
                 "kp_detector.kp.weight: (2, "):  # fmt: skip
        assert item in message, item


def test_a_file_that_is_no_export_names_itself(tmp_path):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="junk.safetensors: not a readable export"):
        export_format.read_export(path)


def test_readme_exporting_example_runs(tiny_mr, tmp_path, monkeypatch):
    model_config, networks = tiny_mr
    write(tmp_path / "model.safetensors", networks, model_config)
    monkeypatch.chdir(tmp_path)
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Exporting", 1)[1].split("\n## ", 1)[0]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    namespace = {}
    exec(code, namespace)
    frame = namespace["frame"]
    assert frame.shape == (1, 3, 64, 64) and 0 < float(frame.min()) <= float(frame.max()) < 1


def test_the_torch_package_loads_without_jax(tiny_mr, tmp_path):
    """PyTorch users need torch and safetensors, not JAX."""
    model_config, networks = tiny_mr
    write(tmp_path / "model.safetensors", networks, model_config)
    code = ("import sys; sys.modules['jax'] = sys.modules['flax'] = None\n"
            "from converters import maskrenderer_torch\n"
            "print(maskrenderer_torch.load(sys.argv[1]).config['num_kp'])")  # fmt: skip
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "model.safetensors")],
                         cwd=root, capture_output=True, text=True, check=True)  # fmt: skip
    assert out.stdout.strip() == "4"
