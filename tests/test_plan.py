"""maskrenderer_jax.train.plan: the step compiled for a TPU slice that is not there.

The compiling tests need libtpu (requirements-tpu.txt, which `make test` installs) and skip
only when it is absent; the search and the argument checks run everywhere.
"""

import importlib.util
import shlex
from pathlib import Path

import jax
import pytest

from configs import common
from maskrenderer_jax.train import plan, sharding

needs_libtpu = pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None,
    reason="libtpu (requirements-tpu.txt) is not installed",
)


@pytest.mark.parametrize("threshold", [0, 1, 2, 3, 37, 64, 100])
def test_largest_fitting_finds_the_threshold_with_few_tries(threshold):
    tried = []

    def fits(n):
        tried.append(n)
        return n <= threshold

    assert plan.largest_fitting(fits) == threshold
    assert len(tried) <= 2 * threshold.bit_length() + 1
    assert len(set(tried)) == len(tried)


def test_largest_fitting_stops_at_its_limit():
    with pytest.raises(RuntimeError, match="still fits at 8"):
        plan.largest_fitting(lambda n: True, limit=8)


def test_slices_name_libtpu_topologies():
    assert plan.SLICES["v5e-16"].topology_name == "v5e:4x4"
    assert plan.SLICES["v4-8"].topology_name == "v4:2x2x1"  # v4 names count TensorCores
    assert plan.SLICES["v5p-8"].chips == 4


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--topology", "v5e-12"], "unknown --topology 'v5e-12'; accepted: v4-8, "),
        (["--topology", "v5e-8", "--batch", "12"], "multiple of v5e-8's 8 devices, got 12"),
    ],
)
def test_bad_arguments_are_one_clear_error(argv, expected, capsys):
    with pytest.raises(SystemExit) as exit_info:
        plan.parse_args(["--config", "configs/tiny.py", *argv])
    assert exit_info.value.code == 2
    assert expected in capsys.readouterr().err


@pytest.mark.slow
@needs_libtpu
def test_plan_compiles_for_a_slice_without_it():
    """FOMM tiny on v5e-8, both meshes: XLA's per-device figures, the FSDP state a fraction
    of the replicated one, and a batch far too large reported as not fitting."""
    config = common.load_config("configs/tiny.py:fomm")
    rows = plan.plan(config, plan.SLICES["v5e-8"], plan.MESHES, batch=16, search=False)
    (data, fsdp) = (row["report"] for row in rows)
    assert [row["mesh"] for row in rows] == ["data {'data': 8, 'fsdp': 1}",
                                             "fsdp {'data': 1, 'fsdp': 8}"]  # fmt: skip
    for report in (data, fsdp):
        assert report.argument_bytes > 0 and report.temp_bytes > 0
        assert 0 < report.peak_bytes < plan.SLICES["v5e-8"].generation.hbm_gib * plan.GIB
        assert report.flops > 1e6
    # The batch splits the same way on both meshes: the same work per device (FSDP adds only
    # gathers), while its state (the arguments, mostly) is split eight ways above the minimum.
    assert fsdp.flops == pytest.approx(data.flops, rel=0.1)
    assert fsdp.argument_bytes < data.argument_bytes / 2
    table = plan.plan_table(rows, plan.SLICES["v5e-8"])
    assert table.count("\n") == 3 and "(of 16 GiB)" in table

    step = plan.AbstractStep(config)
    mesh = sharding.make_mesh(
        plan.mesh_config(config, "data", 8), plan.topology_devices(plan.SLICES["v5e-8"])
    )
    with pytest.raises(jax.errors.JaxRuntimeError, match="RESOURCE_EXHAUSTED"):
        step.compile(mesh, 8 * 4096, triplet=False)


def readme_section() -> str:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    return readme.split("### Planning a pod run", 1)[1].split("\n## ", 1)[0]


def test_readme_plan_command_parses():
    block = readme_section().split("```bash\n", 1)[1].split("```", 1)[0]
    argv = shlex.split(block.replace("\\\n", " "))
    assert argv[:3] == [".venv/bin/python", "-m", "maskrenderer_jax.train.plan"]
    args = plan.parse_args(argv[3:])
    assert args.slice.name == "v5e-16" and args.max_batch_search


@pytest.mark.slow
@needs_libtpu
def test_readme_planning_example_runs():
    code = readme_section().split("```python\n", 1)[1].split("```", 1)[0]
    namespace = {}
    exec(code, namespace)
    assert "| fsdp {'data': 1, 'fsdp': 8} | 8 | without triplet |" in namespace["table"]
