"""maskrenderer-jax: MaskRenderer face reenactment in JAX/Flax."""
