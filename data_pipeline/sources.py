"""Opening the data set a `data` config section names (building synthetic_heads on first use)."""

import logging
from pathlib import Path

import ml_collections

from data_pipeline import frame_source, tfds_writer


def data_section(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Accepts a full config (with a `data` section) or the section itself."""
    return config.data if "data" in config else config


def open_split(data: ml_collections.ConfigDict, split: str) -> frame_source.FrameSource:
    """The split of data.name (default data.dataset) under data.data_dir, images resized to
    data.image_size. synthetic_heads is built from data.synthetic when it is missing (it is
    the embedded default: the demo and the tests need no download); voxceleb must be built
    beforehand with data_pipeline.build."""
    name = data.get("name") or data.dataset
    version_dir = Path(data.data_dir).expanduser() / name / tfds_writer.VERSION
    if data.dataset == "synthetic_heads" and not (version_dir / "dataset_info.json").exists():
        from data_pipeline import build  # JAX rendering only when it is needed

        logging.info("building synthetic_heads into %s", version_dir.parent)
        build.build("synthetic_heads", data.data_dir, name=name, synthetic=data.synthetic.to_dict())
    return frame_source.FrameSource(data.data_dir, name, split, image_size=data.image_size)
