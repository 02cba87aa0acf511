"""The evaluation protocols: self-reenactment (a clip's first frame is driven by the rest of
the clip) and cross-reenactment (another identity's source, first driving frame as the
initial frame), deterministic, padded to whole global batches, split over processes."""

import jax
import numpy as np
import pytest

from data_pipeline import build, eval_iter, fake_data
from data_pipeline.config import data_config

SIZE = 32


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    # test split: identities 3 and 4, 2 clips each, 5 frames per clip.
    layout = fake_data.write_fomm_layout(root / "raw", size=SIZE, num_frames=5)
    build.build("voxceleb", root / "tfds", manual_dir=layout, image_size=SIZE, num_workers=0)
    return root / "tfds"


def config_for(data_dir, **eval_overrides):
    return data_config(dataset="voxceleb", data_dir=str(data_dir), image_size=SIZE,
                       eval=dict(batch_size=6, **eval_overrides))  # fmt: skip


def rows(config, protocol):
    """All valid examples as (source, driving, initial) decoded fake-frame origins."""
    out = []
    for batch in eval_iter.make_eval_iter(config, protocol):
        for i in np.nonzero(batch["valid"])[0]:
            out.append(tuple(fake_data.decode_fake(batch[k][i])[:3]
                             for k in ("source", "driving", "driving_initial")))  # fmt: skip
    return out


def test_self_reenactment_protocol(data_dir):
    got = rows(config_for(data_dir), "self")
    expected = [
        ((i, c, 0), (i, c, t), (i, c, 0)) for i in (3, 4) for c in (0, 1) for t in range(1, 5)
    ]
    assert got == expected  # 16 examples: 3 batches of 6, the last with 4 valid


def test_cross_reenactment_protocol(data_dir):
    got = rows(config_for(data_dir), "cross")
    assert len(got) == 4 * 5  # every frame of every clip drives, the first one included
    for source, driving, initial in got:
        assert source[0] != driving[0] and source[2] == 0  # another person's first frame
        assert initial == (*driving[:2], 0)
    assert got == rows(config_for(data_dir), "cross")  # deterministic


def test_clips_per_identity_keeps_each_identitys_first_clips(data_dir):
    got = rows(config_for(data_dir, clips_per_identity=1), "self")
    assert got == [((i, 0, 0), (i, 0, t), (i, 0, 0)) for i in (3, 4) for t in range(1, 5)]
    got = rows(config_for(data_dir, clips_per_identity=1, max_clips=1, max_frames=2), "self")
    assert got == [((3, 0, 0), (3, 0, t), (3, 0, 0)) for t in (1, 2)]


def test_padding_and_limits(data_dir):
    batches = list(
        eval_iter.make_eval_iter(config_for(data_dir, max_clips=1, max_frames=2), "self")
    )
    assert len(batches) == 1 and batches[0]["valid"].tolist() == [True, True] + [False] * 4
    assert batches[0]["driving_frame"][:2].tolist() == [1, 2]
    assert batches[0]["source"].shape == (6, SIZE, SIZE, 3)


def test_processes_split_each_global_batch(data_dir, monkeypatch):
    whole = list(eval_iter.make_eval_iter(config_for(data_dir), "cross"))
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    parts = []
    for p in range(2):
        monkeypatch.setattr(jax, "process_index", lambda p=p: p)
        parts.append(list(eval_iter.make_eval_iter(config_for(data_dir), "cross")))
    assert len(parts[0]) == len(parts[1]) == len(whole)  # same number of steps everywhere
    for k, batch in enumerate(whole):
        for key, value in batch.items():
            np.testing.assert_array_equal(
                np.concatenate([parts[0][k][key], parts[1][k][key]]), value, err_msg=key
            )


def test_cross_needs_two_identities(tmp_path):
    layout = fake_data.write_fomm_layout(
        tmp_path / "raw", identities={"train": 2, "test": 1}, size=SIZE
    )
    build.build("voxceleb", tmp_path / "tfds", manual_dir=layout, image_size=SIZE, num_workers=0)
    with pytest.raises(ValueError, match="cross-reenactment needs at least 2 identities"):
        eval_iter.make_eval_iter(config_for(tmp_path / "tfds"), "cross")
    assert len(rows(config_for(tmp_path / "tfds"), "self")) == 2 * 7
