"""Data for MaskRenderer: TFDS builders (FOMM-layout VoxCeleb, synthetic heads), the grain
training pipeline (FOMM's id sampling and augmentation) and the evaluation protocols.

    from data_pipeline import data_config, make_train_iter, make_eval_iter

Exports resolve lazily, so the build's worker processes (which import data_pipeline.*
modules) do not load JAX, grain and TFDS just to decode videos.
"""

import importlib

_EXPORTS = {
    "data_config": "data_pipeline.config",
    "make_train_iter": "data_pipeline.train_iter",
    "make_eval_iter": "data_pipeline.eval_iter",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'data_pipeline' has no attribute {name!r}")
