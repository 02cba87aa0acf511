"""Evaluation: the paper's metrics (evaluation.metrics), the networks and face tools they run
on, and the self/cross-reenactment protocol runner behind `python -m maskrenderer_jax.evaluate`."""
