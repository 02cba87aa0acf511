"""The training input pipeline: grain over random access to the TFDS frames.

MapDataset chain (every stage indexable, so the iterator state is a position, and batches do
not depend on the number of workers or processes):
  range(identities x num_repeats) -> shuffle(seed) -> repeat (a new order each epoch) ->
  random_map(TrainSampler) -> this process's rows (ProcessRows) -> map(TrainLoader) ->
  batch(per-process b)
then to_iter_dataset (+ mp_prefetch worker processes). Process p's k-th batch is rows
[p * b, (p + 1) * b) of global batch k, so the processes' batches, concatenated in process
order (the layout of `jax.make_array_from_process_local_data`), are the 1-process batch.
"""

from collections.abc import Sequence

import grain
import jax
import ml_collections
import numpy as np
from absl import flags

from data_pipeline import augment, sources
from data_pipeline.frame_source import FrameSource
from data_pipeline.sampling import TrainSampler
from maskrenderer_jax.face3d import morphable_model as mm


class TrainLoader:
    """grain map: sample dict -> example dict (see `make_train_iter` for the fields)."""

    def __init__(self, source: FrameSource):
        self.source = source

    def __call__(self, s: dict) -> dict:
        src = self.source
        records = [
            src.record(s["clip"], s["source_frame"]),
            src.record(s["clip"], s["driving_frame"]),
            src.record(s["cross_clip"], s["cross_frame"]),
        ]
        source, driving, cross = src.get_many(records)
        # Flip and jitter on uint8 (FOMM augments PIL frames), then to float.
        pair = np.stack([source["image"], driving["image"]])
        cross_image = cross["image"]
        if s["flipped"]:
            pair = pair[:, :, ::-1]
        if s["cross_flipped"]:
            cross_image = cross_image[:, ::-1]
        pair = augment.color_jitter(pair, s["jitter"]).astype(np.float32) / 255.0
        cross_image = (
            augment.color_jitter(cross_image, s["cross_jitter"]).astype(np.float32) / 255.0
        )
        out = {
            "source": pair[0],
            "driving": pair[1],
            "cross_driving": cross_image,
            "source_identity": s["identity"],
            "cross_identity": s["cross_identity"],
            "source_clip": s["clip"],
            "driving_clip": s["clip"],
            "cross_clip": s["cross_clip"],
            "source_frame": s["source_frame"],
            "driving_frame": s["driving_frame"],
            "cross_frame": s["cross_frame"],
            "flipped": np.bool_(s["flipped"]),
            "cross_flipped": np.bool_(s["cross_flipped"]),
        }
        if src.has_coeffs:
            for key, record, flipped in (
                ("source", source, s["flipped"]),
                ("driving", driving, s["flipped"]),
                ("cross", cross, s["cross_flipped"]),
            ):
                coeffs = np.asarray(record["coeffs"], np.float32)
                out[f"{key}_coeffs"] = mm.mirror_coefficients(coeffs) if flipped else coeffs
        return out


def owned_arrays(batch: dict) -> dict:
    """Copies worker outputs out of grain's shared memory blocks, so each block is released as
    soon as its batch is consumed rather than when the caller drops the arrays (or at exit,
    where grain 0.2.18 reports them as leaked)."""
    return {key: np.array(value) for key, value in batch.items()}


class ProcessRows(grain.MapDataset):
    """Process `index`'s rows of each global batch of `parent`: its j-th element is the parent's
    (j // local) * (local * count) + index * local + j % local, for `count` processes with
    `local` rows each."""

    _MUTATES_ELEMENT_SPEC = False

    def __init__(self, parent: grain.MapDataset, local: int, index: int, count: int):
        super().__init__(parent)
        self._local, self._index, self._count = local, index, count
        self._length = len(parent) // (local * count) * local  # whole global batches

    def __len__(self) -> int:
        return self._length

    def _parent_index(self, j: int) -> int:
        epoch, j = divmod(j, self._length)  # like grain's slice: later epochs of the parent
        batch, row = divmod(j, self._local)
        return epoch * len(self._parent) + (batch * self._count + self._index) * self._local + row

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        return self._parent[self._parent_index(index)]

    def _getitems(self, indices: Sequence[int]):
        return self._parent._getitems([self._parent_index(j) for j in indices])

    def __str__(self) -> str:
        return f"ProcessRows(local={self._local}, index={self._index}, count={self._count})"


def local_batch_size(global_batch: int, mesh: jax.sharding.Mesh | None = None) -> int:
    """This process's share of the global batch."""
    count = jax.process_count()
    if mesh is not None:
        shards = mesh.shape.get("data", 1) * mesh.shape.get("fsdp", 1)
        if global_batch % shards:
            raise ValueError(f"batch_size {global_batch} does not split over {shards} devices "
                             "of the mesh's ('data', 'fsdp') axes")  # fmt: skip
    if global_batch % count:
        raise ValueError(f"batch_size {global_batch} does not split over {count} processes")
    return global_batch // count


def train_dataset(config: ml_collections.ConfigDict, mesh=None) -> grain.MapDataset:
    """The batched MapDataset (infinite) of `make_train_iter`, before workers and prefetch."""
    data = sources.data_section(config)
    source = sources.open_split(data, data.train_split)
    sampler = TrainSampler(source.index, data.augmentation)  # raises for < 2 identities
    batch = local_batch_size(data.batch_size, mesh)
    epoch = source.index.num_identities * data.num_repeats
    index, count = jax.process_index(), jax.process_count()
    ds = grain.MapDataset.range(epoch).shuffle(seed=data.seed).repeat(None)
    ds = ds.random_map(sampler, seed=data.seed)  # rng from the GLOBAL position: see below
    # Process p takes rows [p * batch, (p + 1) * batch) of each global batch, so the global batch
    # k (the processes' k-th batches in process order) is the same whatever the process count,
    # and no two processes share an rng stream. Each reads only the records of its own examples.
    ds = ProcessRows(ds, batch, index, count).map(TrainLoader(source))
    return ds.batch(batch, drop_remainder=True)


def make_train_iter(config: ml_collections.ConfigDict, mesh=None) -> grain.DatasetIterator:
    """An endless, checkpointable iterator of this process's training batches.

    Args:
      config: a config with a `data` section (data_pipeline.config.data_config) or the section.
      mesh: if given, the global batch must split over its ('data', 'fsdp') devices.
    Returns:
      A grain DatasetIterator (get_state/set_state for checkpoints) of dicts of numpy arrays,
      B = batch_size // process_count:
        source, driving, cross_driving: [B, H, W, 3] float32 in [0, 1] (H = W = image_size);
          source and driving are two frames of one clip, cross_driving is from another
          identity;
        source_identity, cross_identity: [B] int32 identity numbers (sorted person ids of the
          split); source_clip, driving_clip, cross_clip: [B] int32 clip numbers;
        source_frame, driving_frame, cross_frame: [B] int32 frame numbers in their clips;
        flipped, cross_flipped: [B] bool, horizontally flipped;
        source_coeffs, driving_coeffs, cross_coeffs: [B, 257] float32 3DMM coefficients
          (mirrored with the image), only when the data set has them.
    """
    data = sources.data_section(config)
    ds = train_dataset(config, mesh)
    options = grain.ReadOptions(num_threads=data.read_threads, prefetch_buffer_size=data.prefetch)
    it = ds.to_iter_dataset(options)
    if data.num_workers > 0:
        # grain 0.2.18 reads an absl flag when starting workers and raises in programs that do
        # not parse absl flags (google/grain#1355, fixed upstream): use the flags' defaults.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        it = it.mp_prefetch(
            grain.MultiprocessingOptions(
                num_workers=data.num_workers, per_worker_buffer_size=data.prefetch
            )
        ).map(owned_arrays)
    return iter(it)
