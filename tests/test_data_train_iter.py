"""The grain training pipeline on a tiny FOMM-layout set whose frames encode their origin:
FOMM's id sampling, cross drivers, augmentation, determinism, worker processes,
checkpoint/restore and per-process sharding."""

import contextlib
from collections import Counter

import jax
import numpy as np
import pytest

from data_pipeline import build, fake_data, sampling, train_iter
from data_pipeline.config import data_config

SIZE = 32
FIELDS = {
    "source", "driving", "cross_driving", "source_identity", "cross_identity", "source_clip",
    "driving_clip", "cross_clip", "source_frame", "driving_frame", "cross_frame", "flipped",
    "cross_flipped",
}  # fmt: skip


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    layout = fake_data.write_fomm_layout(root / "raw", size=SIZE)  # 3 train, 2 test identities
    build.build("voxceleb", root / "tfds", manual_dir=layout, image_size=SIZE, num_workers=0)
    return root / "tfds"


def config_for(data_dir, **overrides):
    defaults = dict(dataset="voxceleb", data_dir=str(data_dir), image_size=SIZE, batch_size=4,
                    num_repeats=4)  # fmt: skip
    return data_config(**{**defaults, **overrides})


@contextlib.contextmanager
def opened(config, mesh=None):
    iterator = train_iter.make_train_iter(config, mesh)
    try:
        yield iterator
    finally:
        iterator.close()


def take(config, n, state=None):
    with opened(config) as iterator:
        if state is not None:
            iterator.set_state(state)
        return [next(iterator) for _ in range(n)]


def assert_same(batches_a, batches_b):
    for a, b in zip(batches_a, batches_b, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_batch_fields(data_dir):
    (batch,) = take(config_for(data_dir), 1)
    assert set(batch) == FIELDS  # no coefficients in this data set
    for key in ("source", "driving", "cross_driving"):
        assert batch[key].shape == (4, SIZE, SIZE, 3) and batch[key].dtype == np.float32
        assert 0.0 <= batch[key].min() and batch[key].max() <= 1.0
    assert batch["source_identity"].dtype == np.int32 and batch["flipped"].dtype == bool


def test_pairs_share_a_clip_and_the_cross_driver_is_another_person(data_dir):
    config = config_for(data_dir, augmentation=dict(jitter=0.0))
    with opened(config) as iterator:
        clips = train_iter.sources.open_split(config, "train").index.clips
        for batch in [next(iterator) for _ in range(4)]:
            for i in range(4):
                stem = clips[batch["source_clip"][i]]
                person, video = stem.split("#")[:2]
                expected_clip = (int(person[2:]), int(video[3:]))
                src = fake_data.decode_fake(batch["source"][i])
                drv = fake_data.decode_fake(batch["driving"][i])
                cross = fake_data.decode_fake(batch["cross_driving"][i])
                assert src[:2] == drv[:2] == expected_clip  # one clip, the one it claims
                assert (src[2], drv[2]) == (batch["source_frame"][i], batch["driving_frame"][i])
                assert src[3] == drv[3] == batch["flipped"][i]  # flipped together
                assert cross[0] == batch["cross_identity"][i] != batch["source_identity"][i]
                assert cross[2] == batch["cross_frame"][i] and cross[3] == batch["cross_flipped"][i]
                assert batch["source_identity"][i] == src[0]  # train identities are 0, 1, 2


def test_an_epoch_visits_each_identity_num_repeats_times(data_dir):
    # 3 identities x 4 repeats = 12 examples = 3 batches of 4.
    batches = take(config_for(data_dir), 3)
    counts = Counter(np.concatenate([b["source_identity"] for b in batches]).tolist())
    assert counts == {0: 4, 1: 4, 2: 4}


def test_augmentation_switches_and_rates(data_dir):
    index = train_iter.sources.open_split(config_for(data_dir), "train").index
    aug = config_for(data_dir).augmentation

    def draws(**overrides):
        sampler = sampling.TrainSampler(index, type(aug)({**aug.to_dict(), **overrides}))
        rng = np.random.default_rng(0)
        return [sampler(i, rng) for i in range(400)]

    on = draws()
    assert 0.4 < np.mean([s["flipped"] for s in on]) < 0.6
    reversed_pairs = np.mean([s["source_frame"] > s["driving_frame"] for s in on])
    assert 0.3 < reversed_pairs < 0.6  # time flip (ties are frequent with 8 frames)
    off = draws(flip=False, time_flip=False, jitter=0.0)
    assert not any(s["flipped"] or s["cross_flipped"] for s in off)
    assert all(s["source_frame"] <= s["driving_frame"] for s in off)  # FOMM sorts the pair
    assert all(np.array_equal(s["jitter"][:4], [1, 1, 1, 0]) for s in off)


def test_same_seed_same_batches_another_seed_differs(data_dir):
    first = take(config_for(data_dir), 2)
    assert_same(first, take(config_for(data_dir), 2))
    other = take(config_for(data_dir, seed=1), 2)
    assert not np.array_equal(first[0]["source"], other[0]["source"])


def test_restored_iterator_continues_exactly(data_dir):
    config = config_for(data_dir)
    with opened(config) as iterator:
        for _ in range(3):
            next(iterator)
        state = iterator.get_state()
        expected = [next(iterator) for _ in range(4)]  # crosses the first epoch's end
    assert_same(take(config, 4, state=state), expected)


def test_workers_give_the_same_batches(data_dir):
    serial = take(config_for(data_dir), 3)
    assert_same(take(config_for(data_dir, num_workers=2), 3), serial)


@pytest.mark.slow
def test_restored_iterator_with_workers_continues_exactly(data_dir):
    config = config_for(data_dir, num_workers=2)
    with opened(config) as iterator:
        for _ in range(2):
            next(iterator)
        state = iterator.get_state()
        expected = [next(iterator) for _ in range(3)]
    assert_same(take(config, 3, state=state), expected)


@pytest.mark.parametrize("count", [2, 4])
def test_processes_batches_concatenate_to_the_one_process_batch(data_dir, count, monkeypatch):
    config = config_for(data_dir, batch_size=8)  # 12 examples an epoch: batch 2 crosses its end
    expected = take(config, 3)
    monkeypatch.setattr(jax, "process_count", lambda: count)
    local = []
    for p in range(count):
        monkeypatch.setattr(jax, "process_index", lambda p=p: p)
        local.append(take(config, 3))
        assert local[-1][0]["source"].shape[0] == 8 // count
    concatenated = [
        {key: np.concatenate([batches[k][key] for batches in local]) for key in expected[k]}
        for k in range(3)
    ]  # process 0's rows, then process 1's, ...: the layout of the sharded global batch
    assert_same(concatenated, expected)


def test_batch_must_split_over_processes_and_mesh(data_dir):
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]).reshape(4, 2), ("data", "fsdp"))
    with pytest.raises(ValueError, match="does not split over 8 devices"):
        train_iter.make_train_iter(config_for(data_dir, batch_size=4), mesh)
    with opened(config_for(data_dir, batch_size=8), mesh) as iterator:
        assert next(iterator)["source"].shape[0] == 8


def test_one_identity_is_a_clear_error(tmp_path):
    layout = fake_data.write_fomm_layout(tmp_path / "raw", identities={"train": 1}, size=SIZE)
    build.build("voxceleb", tmp_path / "tfds", manual_dir=layout, image_size=SIZE, num_workers=0)
    with pytest.raises(ValueError, match="at least 2 identities.*has 1"):
        train_iter.make_train_iter(config_for(tmp_path / "tfds"))


def test_frames_are_resized_to_the_config_size(data_dir):
    (batch,) = take(config_for(data_dir, image_size=16, augmentation=dict(jitter=0.0)), 1)
    assert batch["source"].shape == (4, 16, 16, 3)
    src = fake_data.decode_fake(batch["source"][0])
    assert src[2] == batch["source_frame"][0]
