"""The `data` section of a training config (ml_collections), shared by every config file.

configs/*.py wire it in as `config.data = data_config(image_size=64, batch_size=8)`.
"""

import ml_collections
from ml_collections import config_dict


def synthetic_config(**overrides) -> ml_collections.ConfigDict:
    """Size of the synthetic_heads data set that `make_train_iter` builds when it is missing.

    The defaults build in ~15 s on a 2-core CPU (896 frames at 64 px). Eight held-out
    identities: how far a head moves from a clip's first frame differs by identity (mean
    |frame - first frame| 0.019 to 0.041 over the first 14), and with two held-out identities
    (the old default) the held-out numbers were those of the two stillest of the 14, which
    made copying the source a stronger baseline than on the training identities
    (docs/DESIGN_NOTES.md, "A demo that learns"). Identities are rendered independently of
    each other, so the training split does not depend on test_identities.
    """
    config = ml_collections.ConfigDict(
        dict(
            train_identities=6,
            test_identities=8,
            clips_per_identity=4,
            frames_per_clip=16,
            image_size=64,  # 64, 128 or 256: the size the frames are rendered and stored at
            seed=0,
        )
    )
    config.update(overrides)
    return config


def data_config(**overrides) -> ml_collections.ConfigDict:
    """The `data` section: where the data set is, how training batches are sampled.

    Keys (overrides may name any of them; nested sections take dicts):
      dataset: 'synthetic_heads' or 'voxceleb' (a TFDS data set written by data_pipeline.build).
      name: the TFDS name under data_dir; defaults to `dataset`.
      data_dir: the TFDS data_dir (holds name/version/...).
      image_size: side of the images the pipeline returns (frames are resized if the data set
        stores another size).
      batch_size: the GLOBAL batch; each process gets batch_size // process_count.
      num_repeats: an epoch visits every identity this many times (FOMM's num_repeats).
      seed: sampling, shuffling and augmentation seed.
      num_workers: grain worker processes (0: in the calling process, with threads).
      prefetch: batches buffered ahead (per worker, or by the reading threads).
      read_threads: threads that run the per-example map in the calling process.
      train_split / eval_split: TFDS split names.
      augmentation: flip (horizontal, same for source and driving), time_flip (swap source and
        driving), jitter (colour jitter strength: brightness, contrast, saturation, hue).
      eval: batch_size (global); clips_per_identity / max_clips / max_frames (0 = all): the
        first clips of each identity, the number of driving clips, of frames per clip.
      synthetic: `synthetic_config()`, used when dataset == 'synthetic_heads' is missing.
    """
    config = ml_collections.ConfigDict(
        dict(
            dataset="synthetic_heads",
            name=config_dict.placeholder(str),
            data_dir="~/tensorflow_datasets",
            image_size=64,
            batch_size=8,
            num_repeats=10,
            seed=0,
            num_workers=0,
            prefetch=2,
            read_threads=2,
            train_split="train",
            eval_split="test",
            augmentation=dict(flip=True, time_flip=True, jitter=0.1),
            eval=dict(batch_size=8, clips_per_identity=0, max_clips=0, max_frames=0),
            synthetic=synthetic_config(),
        )
    )
    for key, value in overrides.items():
        if key not in config:
            raise KeyError(f"unknown data config key {key!r}; known: {sorted(config)}")
        if isinstance(value, dict):
            config[key].update(value)
        else:
            config[key] = value
    return config
