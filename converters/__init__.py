"""Converters between published checkpoints (PyTorch, .mat, .pkl) and this project's Flax
variables. One module per source network; `converters.torch_layout` holds the shared, strict
key mapping and `converters.safe_load` the code-free readers for untrusted files."""
