"""The portable reenactor (converters.portable): a jax.export artefact that runs in a Python
that cannot import this repository, and an ONNX graph run by onnxruntime, both against the
in-repo Reenactor, for a symbolic batch run at two sizes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import onnxruntime
import pytest

from configs.common import load_config
from converters import portable
from maskrenderer_jax import params_io
from maskrenderer_jax.cli_errors import UserError
from maskrenderer_jax.models import maskrenderer as mr
from maskrenderer_jax.train.frozen import morphable_model

SIZE = 64  # configs/tiny.py
FRAMES = 3  # the reference's driving frames; the artefacts also run on the first 2


def _clean_python(code: str, cwd: Path) -> str:
    """Runs `code` in an isolated Python (-I: no PYTHONPATH, no user site, no script folder on
    sys.path) in `cwd`, with an environment that holds no path to the repository; returns
    its stdout."""
    env = {"PATH": os.environ["PATH"], "JAX_PLATFORMS": "cpu", "HOME": str(cwd)}
    guard = "import importlib.util\nassert importlib.util.find_spec('maskrenderer_jax') is None\n"
    done = subprocess.run([sys.executable, "-I", "-c", guard + code], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module", params=["fomm", "maskrenderer"])
def tiny(request):
    """configs/tiny.py (:fomm), random weights, the synthetic 3DMM (MaskRenderer), inputs for
    FRAMES driving frames and the in-repo Reenactor's frames for them."""
    config = load_config("configs/tiny.py" + (":fomm" if request.param == "fomm" else ""))
    key = jax.random.key(0)
    variables = jax.jit(lambda k: mr.init_variables(config.model, k))(key)
    face_model = morphable_model(config) if request.param == "maskrenderer" else None
    inputs = portable.random_inputs(SIZE, FRAMES, face_model)
    return {
        "name": request.param,
        "config": config,
        "variables": variables,
        "face_model": face_model,
        "inputs": inputs,
        "reference": portable.reference_frames(config.model, variables, face_model, inputs),
    }


def _artefact_inputs(tiny, sig, batch: int) -> dict[str, np.ndarray]:
    """The inputs `sig` names, the batched ones (first dimension symbolic) cut to `batch`."""
    inputs = {n: tiny["inputs"][n] for n in sig.names}
    return {n: x[:batch] if not isinstance(s[0], int) else x
            for (n, x), s in zip(inputs.items(), sig.shapes, strict=True)}  # fmt: skip


def _function(tiny, *, branch_outputs: bool):
    uses_3d = tiny["face_model"] is not None
    batch = jax.export.symbolic_shape("b")[0]
    sig = portable.signature(SIZE, uses_3d=uses_3d, branch_outputs=branch_outputs, batch=batch)
    fn = portable.frame_function(tiny["config"].model, tiny["variables"], tiny["face_model"],
                                 branch_outputs=branch_outputs)  # fmt: skip
    return fn, sig


def test_stablehlo_runs_without_the_repository(tiny, tmp_path):
    fn, sig = _function(tiny, branch_outputs=False)
    (tmp_path / "reenactor.jax").write_bytes(portable.export_stablehlo(fn, sig))
    for batch in (FRAMES, 2):  # one artefact, two batch sizes; arrays arr_0, arr_1, ... in order
        np.savez(tmp_path / f"inputs{batch}.npz", *_artefact_inputs(tiny, sig, batch).values())
    _clean_python(
        "import jax, numpy as np\n"
        "exported = jax.export.deserialize(bytearray(open('reenactor.jax', 'rb').read()))\n"
        "for batch in (3, 2):\n"
        "    with np.load(f'inputs{batch}.npz') as f:\n"
        "        arrays = [f[f'arr_{i}'] for i in range(len(f.files))]\n"
        "    np.save(f'frames{batch}.npy', np.asarray(exported.call(*arrays)))\n",
        tmp_path,
    )
    for batch in (FRAMES, 2):
        frames = np.load(tmp_path / f"frames{batch}.npy")
        assert frames.shape == (batch, SIZE, SIZE, 3)
        np.testing.assert_allclose(frames, tiny["reference"][:batch], atol=1e-5)


def test_onnx_matches_the_reenactor(tiny):
    """MaskRenderer's graph takes the 3D branch's outputs (its rasterizer does not convert)."""
    fn, sig = _function(tiny, branch_outputs=True)
    if tiny["face_model"] is not None:
        assert sig.names[3:] == portable.BRANCH_INPUTS
    model = portable.export_onnx(fn, sig)
    assert [i.name for i in model.graph.input] == list(sig.names)
    assert model.graph.input[1].type.tensor_type.shape.dim[0].dim_param == "b"
    session = onnxruntime.InferenceSession(model.SerializeToString())
    for batch in (FRAMES, 2):
        frames = session.run(None, _artefact_inputs(tiny, sig, batch))[0]
        assert frames.shape == (batch, SIZE, SIZE, 3)
        np.testing.assert_allclose(frames, tiny["reference"][:batch], atol=1e-4)


def test_command_writes_a_verified_artefact(tmp_path, capsys):
    config = load_config("configs/tiny.py:fomm")
    variables = jax.jit(lambda k: mr.init_variables(config.model, k))(jax.random.key(1))
    params_io.save_variables(tmp_path / "variables", variables)
    out = tmp_path / "reenactor.onnx"
    argv = ["--variables", str(tmp_path / "variables"), "--config", "configs/tiny.py:fomm",
            "--out", str(out), "--format", "onnx", "--batch", "2", "--verify"]  # fmt: skip
    summary = portable.main(argv)
    assert summary["inputs"] == list(portable.IMAGE_INPUTS)
    assert summary["max_abs_difference"] < 1e-4
    assert "verified: max |artefact - Reenactor|" in capsys.readouterr().out
    session = portable.onnx_session(out)
    assert [tuple(i.shape) for i in session.get_inputs()][1] == (2, SIZE, SIZE, 3)
    with pytest.raises(UserError, match="exists; pass --overwrite"):
        portable.main(argv)
    with pytest.raises(UserError, match="--batch must be a positive integer or 'symbolic'"):
        portable.main([*argv[:-3], "--batch", "0", "--overwrite"])


def test_missing_or_corrupt_artefact_is_one_error_naming_it(tmp_path):
    missing, corrupt = tmp_path / "missing.jax", tmp_path / "corrupt.bin"
    corrupt.write_bytes(b"\x00not an artefact" * 64)
    for load in (portable.load_stablehlo, portable.onnx_session):
        with pytest.raises(UserError, match=f"{missing}: no such file"):
            load(missing)
    with pytest.raises(UserError, match=f"{corrupt}: not a jax.export artefact"):
        portable.load_stablehlo(corrupt)
    with pytest.raises(UserError, match=f"{corrupt}: not an ONNX model onnxruntime loads"):
        portable.onnx_session(corrupt)


def test_readme_portable_example_runs_without_the_repository(tmp_path):
    """The README's loading snippet, in a Python that cannot import the repository, on both
    artefacts of a tiny FOMM."""
    config = load_config("configs/tiny.py:fomm")
    variables = jax.jit(lambda k: mr.init_variables(config.model, k))(jax.random.key(2))
    fn, sig = _function({"config": config, "variables": variables, "face_model": None},
                        branch_outputs=False)  # fmt: skip
    (tmp_path / "reenactor.jax").write_bytes(portable.export_stablehlo(fn, sig))
    import onnx

    onnx.save(portable.export_onnx(fn, sig), tmp_path / "reenactor.onnx")
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("### Portable reenactor", 1)[1].split("\n## ", 1)[0]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    check = "import json\nprint(json.dumps([frames.shape, float(abs(frames - onnx_frames).max())]))"
    shape, difference = json.loads(_clean_python(code + check, tmp_path).splitlines()[-1])
    assert shape == [4, SIZE, SIZE, 3]
    assert difference < 1e-4
