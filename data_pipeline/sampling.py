"""What one training example is made of, drawn from its own rng: FOMM's id_sampling (an epoch
visits every identity num_repeats times; each visit picks one of the identity's clips and two
frames of it, sorted, with replacement as FOMM's `np.random.choice(..., replace=True)`), a
cross driver from another identity, and the augmentation parameters."""

import ml_collections
import numpy as np

from data_pipeline import augment
from data_pipeline.frame_source import ClipIndex


class TrainSampler:
    """grain random_map: item (an int whose remainder mod I is the identity) -> sample dict."""

    def __init__(self, index: ClipIndex, augmentation: ml_collections.ConfigDict):
        if index.num_identities < 2:
            raise ValueError(
                f"training needs at least 2 identities (the cross driver comes from another "
                f"one), the data set has {index.num_identities}: {list(index.identities)}"
            )
        self.index = index
        self.flip, self.time_flip = bool(augmentation.flip), bool(augmentation.time_flip)
        self.jitter = float(augmentation.jitter)

    def _frame(self, rng, clip: int, size: int = 1) -> np.ndarray:
        return rng.integers(0, self.index.lengths[clip], size=size)

    def _jitter(self, rng) -> np.ndarray:
        if self.jitter > 0:
            return augment.jitter_params(rng, self.jitter)
        return np.array([1, 1, 1, 0, 0, 1, 2, 3], np.float32)  # identity, in any order

    def __call__(self, item: int, rng: np.random.Generator) -> dict:
        num_ids = self.index.num_identities
        identity = int(item) % num_ids
        clip = rng.choice(self.index.clips_of[identity])
        source_frame, driving_frame = np.sort(self._frame(rng, clip, 2))
        cross_identity = (identity + rng.integers(1, num_ids)) % num_ids  # any other one
        cross_clip = rng.choice(self.index.clips_of[cross_identity])
        cross_frame = self._frame(rng, cross_clip)[0]
        if self.time_flip and rng.uniform() < 0.5:
            source_frame, driving_frame = driving_frame, source_frame
        return {
            "identity": np.int32(identity),
            "clip": np.int32(clip),
            "source_frame": np.int32(source_frame),
            "driving_frame": np.int32(driving_frame),
            "cross_identity": np.int32(cross_identity),
            "cross_clip": np.int32(cross_clip),
            "cross_frame": np.int32(cross_frame),
            "flipped": self.flip and rng.uniform() < 0.5,
            "jitter": self._jitter(rng),
            "cross_flipped": self.flip and rng.uniform() < 0.5,
            "cross_jitter": self._jitter(rng),
        }
