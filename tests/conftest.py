"""Test setup: 8 virtual CPU devices (for mesh tests) and float32 matmuls everywhere."""

import os

# Must happen before JAX is imported anywhere.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

# Parity tests compare against float32 torch; keep XLA's CPU dots at full precision.
jax.config.update("jax_default_matmul_precision", "highest")
