"""Opening the data set a `data` config section names (building synthetic_heads on first use)."""

import json
import logging
from pathlib import Path

import ml_collections

from data_pipeline import frame_source, tfds_writer
from data_pipeline.config import synthetic_config


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
    if data.dataset == "synthetic_heads":
        if not (version_dir / "dataset_info.json").exists():
            from data_pipeline import build  # JAX rendering only when it is needed

            logging.info("building synthetic_heads into %s", version_dir.parent)
            build.build("synthetic_heads", data.data_dir, name=name,
                        synthetic=data.synthetic.to_dict())  # fmt: skip
        check_synthetic_settings(version_dir, data.synthetic)
    return frame_source.FrameSource(data.data_dir, name, split, image_size=data.image_size)


def check_synthetic_settings(version_dir: Path, synthetic: ml_collections.ConfigDict) -> None:
    """ValueError when the synthetic_heads set in `version_dir` was rendered from other
    identities, clips, frames or seed than `synthetic` (data.synthetic) asks for: reusing it
    would train or evaluate on another data set than the config says. The render size is not
    compared (frames are resized to data.image_size). A set built before the settings were
    recorded in its metadata is not checked."""
    metadata = json.loads((version_dir / "metadata.json").read_text())
    built = metadata.get("synthetic")
    if built is None:
        return
    wanted = synthetic_config(**synthetic.to_dict()).to_dict()
    differences = [
        f"{key}: built with {built.get(key)!r}, the config asks for {value!r}"
        for key, value in wanted.items()
        if key != "image_size" and built.get(key) != value
    ]
    if differences:
        raise ValueError(
            f"{version_dir} was built from other data.synthetic settings than the config's "
            f"({'; '.join(differences)}): remove {version_dir.parent} to rebuild it, or set "
            "data.name to build the config's set beside it"
        )
