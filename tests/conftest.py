"""Test setup: 8 virtual CPU devices (for mesh tests), float32 matmuls everywhere, and one
XLA compilation cache for the whole session."""

import os
import shutil
import tempfile

# Must happen before JAX is imported anywhere.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Many tests compile the same tiny training steps, in this process, in the other xdist worker
# and in the training subprocesses they start: one persistent cache, made by the process that
# starts the session (the workers and subprocesses inherit the environment) and removed at its
# end. A size limit turns on the cache's file lock, for the concurrent writers.
_SESSION_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _SESSION_CACHE = tempfile.mkdtemp(prefix="maskrenderer-jax-tests-xla-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _SESSION_CACHE
    os.environ["JAX_COMPILATION_CACHE_MAX_SIZE"] = str(8 << 30)

import jax  # noqa: E402

# Parity tests compare against float32 torch; keep XLA's CPU dots at full precision.
jax.config.update("jax_default_matmul_precision", "highest")


import ctypes  # noqa: E402
import gc  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Each xdist worker runs many modules in one process: without this, every module's
    compiled XLA programs stay cached and a worker grows past 8 GB, which with the
    multi-process training tests' subprocesses exceeds a 24 GB machine."""
    yield
    jax.clear_caches()
    gc.collect()
    if hasattr(ctypes.CDLL(None), "malloc_trim"):  # glibc keeps freed memory otherwise
        ctypes.CDLL(None).malloc_trim(0)


def pytest_unconfigure(config):
    if _SESSION_CACHE is not None:
        shutil.rmtree(_SESSION_CACHE, ignore_errors=True)
