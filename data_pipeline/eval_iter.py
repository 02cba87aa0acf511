"""The evaluation protocols of the paper (FOMM's), deterministic, over the test split.

- self-reenactment ('self'): the first frame of each test clip is the source; every later
  frame of the clip drives it (and is the ground truth).
- cross-reenactment ('cross'): each test clip drives a source frame (the first frame of a
  clip) of another identity, drawn from a seeded rng; the clip's first frame is the initial
  driving frame for relative motion, and every frame of it drives.

Items are padded to a multiple of the global batch (padding has valid=False), and each process
takes its own rows of every global batch, so all processes run the same number of steps.
"""

import grain
import jax
import ml_collections
import numpy as np

from data_pipeline import sources
from data_pipeline.frame_source import ClipIndex, FrameSource
from data_pipeline.train_iter import local_batch_size

PROTOCOLS = ("self", "cross")


def eval_pairs(
    index: ClipIndex,
    protocol: str,
    *,
    seed: int = 0,
    clips_per_identity: int = 0,
    max_clips: int = 0,
    max_frames: int = 0,
) -> np.ndarray:
    """[N, 5] int64 rows (source clip, source frame, driving clip, driving frame, initial
    frame of the driving clip) of the protocol; clips_per_identity / max_clips / max_frames
    (0 = all) keep the first clips of each identity, then cut the number of driving clips
    and of driving frames per clip."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if protocol == "cross" and index.num_identities < 2:
        raise ValueError(
            f"cross-reenactment needs at least 2 identities, the split has {index.num_identities}"
        )
    rng = np.random.default_rng(seed)
    rows = []
    clips = np.arange(len(index.clips))
    if clips_per_identity > 0:
        clips = np.sort(np.concatenate([of[:clips_per_identity] for of in index.clips_of]))
    for clip in clips[:max_clips] if max_clips > 0 else clips:
        first = 1 if protocol == "self" else 0  # self: frame 0 is the source, not a target
        frames = np.arange(first, index.lengths[clip])
        frames = frames[:max_frames] if max_frames > 0 else frames
        if protocol == "self":
            source_clip = clip
        else:
            other = index.clip_identity[clip] + rng.integers(1, index.num_identities)
            source_clip = rng.choice(index.clips_of[other % index.num_identities])
        rows += [(source_clip, 0, clip, t, 0) for t in frames]
    return np.asarray(rows, np.int64).reshape(-1, 5)


def protocol_pairs(
    config: ml_collections.ConfigDict, protocol: str, *, limit: int = 0, index=None
) -> np.ndarray:
    """The `eval_pairs` rows of a config's eval split (data.seed, data.eval's
    clips_per_identity, max_clips, max_frames), the first `limit` of them (0 = all)."""
    data = sources.data_section(config)
    index = sources.open_split(data, data.eval_split).index if index is None else index
    pairs = eval_pairs(
        index, protocol, seed=data.seed,
        # Runs saved before clips_per_identity existed evaluated every clip.
        clips_per_identity=data.eval.get("clips_per_identity", 0),
        max_clips=data.eval.max_clips, max_frames=data.eval.max_frames,
    )  # fmt: skip
    return pairs[:limit] if limit > 0 else pairs


class EvalLoader:
    """grain map: a row of `eval_pairs` (or None: padding) -> example dict."""

    def __init__(self, source: FrameSource, pairs: np.ndarray):
        self.source, self.pairs = source, pairs

    def __call__(self, item: int) -> dict:
        valid = item < len(self.pairs)
        src_clip, src_frame, clip, frame, initial = self.pairs[min(item, len(self.pairs) - 1)]
        s = self.source
        records = [s.record(src_clip, src_frame), s.record(clip, frame), s.record(clip, initial)]
        unique = sorted(set(records))  # self-reenactment: the initial frame is the source
        decoded = dict(zip(unique, s.get_many(unique), strict=True))
        source, driving, first = (decoded[r] for r in records)
        out = {
            "source": source["image"].astype(np.float32) / 255.0,
            "driving": driving["image"].astype(np.float32) / 255.0,
            "driving_initial": first["image"].astype(np.float32) / 255.0,
            "source_identity": np.int32(s.index.clip_identity[src_clip]),
            "driving_identity": np.int32(s.index.clip_identity[clip]),
            "source_clip": np.int32(src_clip),
            "driving_clip": np.int32(clip),
            "driving_frame": np.int32(frame),
            "valid": np.bool_(valid),
        }
        if s.has_coeffs:
            for key, record in (
                ("source", source),
                ("driving", driving),
                ("driving_initial", first),
            ):
                out[f"{key}_coeffs"] = np.asarray(record["coeffs"], np.float32)
        return out


def eval_dataset(
    config: ml_collections.ConfigDict, protocol: str = "self", *, mesh=None, limit: int = 0
) -> grain.MapDataset:
    """The batched MapDataset of `make_eval_iter` (len() = steps)."""
    data = sources.data_section(config)
    source = sources.open_split(data, data.eval_split)
    pairs = protocol_pairs(config, protocol, limit=limit, index=source.index)
    global_batch = data.eval.batch_size
    batch = local_batch_size(global_batch, mesh)
    steps = -(-len(pairs) // global_batch)
    process = jax.process_index()
    # Local item j of step k is global item k * B + process * b + j (its rows of the batch).
    ds = grain.MapDataset.range(steps * batch).map(
        lambda j: (j // batch) * global_batch + process * batch + j % batch
    )
    return ds.map(EvalLoader(source, pairs)).batch(batch)


def make_eval_iter(
    config: ml_collections.ConfigDict, protocol: str = "self", *, mesh=None, limit: int = 0
):
    """A finite iterator of this process's evaluation batches (the same on every run).

    Args:
      config: a config with a `data` section, or the section (uses eval_split, seed,
        image_size, eval.batch_size (global), eval.max_clips, eval.max_frames).
      protocol: 'self' or 'cross' (see the module docstring).
      limit: keep the protocol's first `limit` (source, driving) pairs (0 = all).
    Returns:
      Iterator of dicts of numpy arrays, B = eval.batch_size // process_count:
        source, driving, driving_initial: [B, H, W, 3] float32 in [0, 1];
        source_identity, driving_identity, source_clip, driving_clip, driving_frame: [B] int32;
        valid: [B] bool (False on padding rows);
        source_coeffs, driving_coeffs, driving_initial_coeffs: [B, 257] float32 if available.
    """
    data = sources.data_section(config)
    options = grain.ReadOptions(num_threads=data.read_threads, prefetch_buffer_size=data.prefetch)
    return iter(eval_dataset(config, protocol, mesh=mesh, limit=limit).to_iter_dataset(options))
