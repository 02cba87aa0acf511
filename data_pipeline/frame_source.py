"""Reading a built data set: random access to frames through TFDS's data source, and the clip
index (which records belong to which clip and identity) from its metadata."""

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from data_pipeline import tfds_writer
from maskrenderer_jax import media


@dataclasses.dataclass(frozen=True)
class ClipIndex:
    """The clips of one split. Identities are numbered 0..I-1 in sorted order of their ids.

    Attributes:
      clips: [C] clip ids; identities: [I] person ids.
      clip_identity: [C] int, the identity number of each clip.
      offsets, lengths: [C] int, each clip's first record and frame count.
      clips_of: I int arrays, the clip numbers of each identity.
    """

    clips: tuple[str, ...]
    identities: tuple[str, ...]
    clip_identity: np.ndarray
    offsets: np.ndarray
    lengths: np.ndarray
    clips_of: tuple[np.ndarray, ...]

    @classmethod
    def from_metadata(cls, index: dict) -> "ClipIndex":
        identities = tuple(sorted(set(index["identities"])))
        number = {name: i for i, name in enumerate(identities)}
        clip_identity = np.array([number[i] for i in index["identities"]], np.int64)
        return cls(
            clips=tuple(index["clips"]),
            identities=identities,
            clip_identity=clip_identity,
            offsets=np.asarray(index["offsets"], np.int64),
            lengths=np.asarray(index["lengths"], np.int64),
            clips_of=tuple(np.nonzero(clip_identity == i)[0] for i in range(len(identities))),
        )

    @property
    def num_identities(self) -> int:
        return len(self.identities)


def dataset_dir(data_dir: str | os.PathLike, name: str) -> Path:
    path = Path(data_dir).expanduser() / name / tfds_writer.VERSION
    if not (path / "dataset_info.json").exists():
        raise FileNotFoundError(
            f"no data set at {path}; build it with python -m data_pipeline.build "
            f"--dataset ... --data_dir {data_dir}"
        )
    return path


class FrameSource:
    """One split of a built data set: len() frames, [i] -> a decoded frame record.

    Records: {'image': [S, S, 3] uint8 (resized to image_size if given), 'clip', 'identity'
    (bytes), 'frame', 'clip_length' (int), 'coeffs' ([257] float32, if the set has them)}.
    Picklable (grain's worker processes get a copy and reopen the files).
    """

    def __init__(self, data_dir, name: str, split: str, image_size: int | None = None):
        self.data_dir, self.name, self.split, self.image_size = data_dir, name, split, image_size
        path = dataset_dir(data_dir, name)
        metadata = json.loads((path / "metadata.json").read_text())
        if split not in metadata["index"]:
            raise ValueError(f"{path}: no split {split!r} (has {sorted(metadata['index'])})")
        self.index = ClipIndex.from_metadata(metadata["index"][split])
        self.stored_size = metadata["image_size"]
        self.has_coeffs = bool(metadata["has_coeffs"])
        self._source = None

    def _records(self):
        if self._source is None:  # opened lazily: once per process
            builder = tfds.builder_from_directory(str(dataset_dir(self.data_dir, self.name)))
            self._source = builder.as_data_source(
                split=self.split, decoders={"image": tfds.decode.SkipDecoding()}
            )
        return self._source

    def __getstate__(self):
        return {**self.__dict__, "_source": None}

    def __len__(self) -> int:
        return int(self.index.offsets[-1] + self.index.lengths[-1])

    def __getitem__(self, record: int) -> dict:
        return self._decode(self._records()[int(record)])

    def get_many(self, records) -> list[dict]:
        return [self._decode(r) for r in self._records().__getitems__([int(i) for i in records])]

    def _decode(self, example: dict) -> dict:
        example = dict(example)
        example["image"] = media.decode_image(example["image"], self.image_size)
        return example

    def record(self, clip: int, frame: int) -> int:
        """The record number of frame `frame` of clip number `clip`."""
        return int(self.index.offsets[clip] + frame)
