"""Test setup: 8 virtual CPU devices (for mesh tests) and float32 matmuls everywhere."""

import os

# Must happen before JAX is imported anywhere.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

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
