"""Assembles staged clips into a TFDS data set (array_record), one example per frame.

Element spec (per frame):
  image: [S, S, 3] uint8, stored as PNG or JPEG bytes
  clip: text, the clip id (FOMM file stem); identity: text, the person id
  frame: int32 index in the clip; clip_length: int32 frames in the clip
  coeffs: [257] float32 3DMM coefficients (only in data sets built with them)

Examples are written in (split, identity, clip, frame) order with TFDS shuffling disabled,
so each clip is a contiguous run of records; that run table (the clip index) is stored in
the data set's metadata.json and lets the pipeline sample clips without reading images.
"""

import hashlib
import json
import logging
import shutil
import types
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from data_pipeline import staging
from maskrenderer_jax.face3d.morphable_model import NUM_COEFFS

VERSION = "1.0.0"


def features(image_size: int, image_format: str, has_coeffs: bool) -> tfds.features.FeaturesDict:
    spec = {
        "image": tfds.features.Image(
            shape=(image_size, image_size, 3), encoding_format=image_format
        ),
        "clip": tfds.features.Text(),
        "identity": tfds.features.Text(),
        "frame": tfds.features.Scalar(np.int32),
        "clip_length": tfds.features.Scalar(np.int32),
    }
    if has_coeffs:
        spec["coeffs"] = tfds.features.Tensor(shape=(NUM_COEFFS,), dtype=np.float32)
    return tfds.features.FeaturesDict(spec)


def clip_index(infos: list[dict]) -> dict:
    """Record runs of the clips of one split (in write order): clip ids, identities, first
    record and length of each."""
    lengths = [info["num_frames"] for info in infos]
    return {
        "clips": [info["clip"] for info in infos],
        "identities": [info["identity"] for info in infos],
        "offsets": np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(int).tolist(),
        "lengths": lengths,
    }


def staging_digest(splits: dict[str, list[Path]], settings: dict) -> str:
    """Changes whenever a staged clip is added, removed or rewritten, or a setting changes."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for split, paths in sorted(splits.items()):
        for p in paths:
            st = p.stat()
            h.update(f"{split}/{p.name}/{st.st_size}/{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def remove_incomplete(dataset_root: Path) -> list[str]:
    """Deletes TFDS's `incomplete.*` folders under data_dir/name (a build killed while
    writing leaves one; TFDS renames it to the version folder only when complete). One build
    at a time per data set: a concurrent one's folder would go too."""
    removed = []
    root = Path(dataset_root)
    # tensorflow_datasets.core.constants.INCOMPLETE_PREFIX
    for path in sorted(root.glob("incomplete.*")) if root.is_dir() else []:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
        logging.info("removed %s, left by an interrupted build", path)
        removed.append(str(path))
    return removed


def _builder_class(name: str) -> type:
    """A GeneratorBasedBuilder named `name`, kept out of TFDS's registry: readers load the
    data set from its directory (features.json), not from this code."""

    class StagedFrames(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version(VERSION)

        def __init__(self, *, splits, settings, metadata, **kwargs):
            self._staged_splits, self._settings, self._meta = splits, settings, metadata
            super().__init__(**kwargs)

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                description="Face video frames (FOMM layout), one example per frame.",
                features=features(**self._settings),
                disable_shuffling=True,  # keeps clips contiguous: see the module docstring
                metadata=tfds.core.MetadataDict(self._meta),
            )

        def _split_generators(self, dl_manager):
            return {s: self._generate_examples(p) for s, p in self._staged_splits.items()}

        def _generate_examples(self, paths):
            for path in paths:
                clip = staging.read_staged(path)
                for t, image in enumerate(clip.frames):
                    example = {
                        "image": image,
                        "clip": clip.clip,
                        "identity": clip.identity,
                        "frame": t,
                        "clip_length": len(clip.frames),
                    }
                    if self._settings["has_coeffs"]:
                        example["coeffs"] = clip.coeffs[t]
                    yield f"{clip.clip}/{t:06d}", example

    return types.new_class(
        name.title().replace("_", ""), (StagedFrames,), {"skip_registration": True},
        lambda ns: ns.update(name=name),
    )  # fmt: skip


def write_dataset(
    data_dir: Path,
    name: str,
    splits: dict[str, list[Path]],
    *,
    image_size: int,
    image_format: str,
    has_coeffs: bool,
    extra_metadata: dict | None = None,
) -> tuple[Path, bool]:
    """Writes (or keeps, if up to date) data_dir/name/VERSION from staged clip files, each
    split's files in the order given. Returns (version dir, whether it was written now)."""
    splits = {s: [Path(p) for p in paths] for s, paths in splits.items() if paths}
    if not splits:
        raise ValueError(f"{name}: no usable clip in any split, nothing to write")
    settings = dict(image_size=image_size, image_format=image_format, has_coeffs=has_coeffs)
    digest = staging_digest(splits, settings)
    version_dir = Path(data_dir) / name / VERSION
    if (version_dir / "metadata.json").exists():
        if json.loads((version_dir / "metadata.json").read_text()).get("digest") == digest:
            return version_dir, False
        shutil.rmtree(version_dir)  # stale: the staged clips changed since it was written
    infos = {s: [staging.staged_info(p) for p in paths] for s, paths in splits.items()}
    metadata = {
        "digest": digest,
        **settings,
        "index": {s: clip_index(i) for s, i in infos.items()},
        **(extra_metadata or {}),
    }
    builder = _builder_class(name)(
        splits=splits,
        settings=settings,
        metadata=metadata,
        data_dir=str(data_dir),
        file_format="array_record",
    )
    tfds.disable_progress_bar()
    builder.download_and_prepare()
    return version_dir, True
