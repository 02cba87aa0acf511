"""maskrenderer_jax.train.plan: the step compiled for a TPU slice that is not there.

The compiling tests need libtpu (requirements-tpu.txt, which `make` installs in .venv/libtpu)
and skip only when it is absent; the search and the argument checks run everywhere. Compiling the
real step for a TPU is slow on a small CPU (minutes for FOMM tiny on 2 shared cores): one
compile, the README's example, is slow-marked; the search runs on a stand-in step.
"""

import os
import shlex
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from configs import common
from maskrenderer_jax.train import plan, sharding

needs_libtpu = pytest.mark.skipif(
    plan.find_libtpu() is None, reason="libtpu (requirements-tpu.txt) is not installed"
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


def test_jax_processes_start_without_probing_libtpu():
    """libtpu stays off the import path (plan.find_libtpu): a JAX process that does not set
    JAX_PLATFORMS starts without loading it, so without its warnings on stderr."""
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS" and not k.startswith("TPU_")}
    started = subprocess.run(
        [sys.executable, "-c", "import jax; print(jax.devices()[0].platform)"],
        env=env, capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    assert started.stdout.strip() == "cpu"
    assert "TPU" not in started.stderr and "libtpu" not in started.stderr, started.stderr


class GrowingStep:
    """A stand-in for plan.AbstractStep that compiles in a second: 4 MiB in and 4 MiB out
    per example on each device, so a v5e chip (16 GiB) holds about 2000 examples."""

    def compile(self, mesh, global_batch: int, *, triplet: bool):
        x = jax.ShapeDtypeStruct(
            (global_batch, 2**20), jnp.float32, sharding=sharding.batch_sharding(mesh)
        )
        return jax.jit(lambda x: jnp.sin(x) * 2).lower(x).compile()


@needs_libtpu
def test_the_batch_search_takes_libtpus_out_of_memory_verdict():
    """On v5e-8's compile-only devices: the largest batch found compiles, one more example
    per device fails with RESOURCE_EXHAUSTED, and it lies between two powers of two."""
    devices = plan.topology_devices(plan.SLICES["v5e-8"])
    assert len(devices) == 8 and {d.device_kind for d in devices} == {"TPU v5 lite"}
    mesh = sharding.make_mesh(plan.mesh_config(common.load_config("configs/tiny.py"), "data", 8),
                              devices)  # fmt: skip
    step = GrowingStep()
    largest, tried = plan.largest_batch(step, mesh, triplet=False)
    per_device = largest // 8
    assert largest % 8 == 0 and 1024 <= per_device < 2048
    assert (largest, True) in tried and (largest + 8, False) in tried
    with pytest.raises(jax.errors.JaxRuntimeError, match="RESOURCE_EXHAUSTED"):
        step.compile(mesh, largest + 8, triplet=False)


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
@pytest.mark.xdist_group("memory")  # with the other memory-heavy tests, on one worker
def test_readme_planning_example_runs():
    code = readme_section().split("```python\n", 1)[1].split("```", 1)[0]
    namespace = {}
    # As a user runs it: under the tests' global 'highest' matmul precision the TPU compiler
    # emulates float32 matmuls, and the example takes 4 minutes instead of 1.
    with jax.default_matmul_precision(None):
        exec(code, namespace)
    assert "| data {'data': 8, 'fsdp': 1} | 8 | without triplet |" in namespace["table"]
