"""data_pipeline.build on FOMM-layout folders made in the test: the TFDS schema and clip index,
parallel and resumable staging, the report, and each kind of bad input skipped (not fatal)."""

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from data_pipeline import build, fake_data, frame_source, staging
from maskrenderer_jax import media

SIZE = 64
ROOT = Path(__file__).resolve().parents[1]


def read_all(data_dir, split, name="voxceleb"):
    path = frame_source.dataset_dir(data_dir, name)
    return tfds.builder_from_directory(str(path)).as_data_source(split=split)


@pytest.fixture(scope="module")
def mp4_layout(tmp_path_factory):
    root = tmp_path_factory.mktemp("fomm_mp4")
    return fake_data.write_fomm_layout(root, video_format="mp4", size=SIZE)


def test_build_mp4_schema_index_and_report(mp4_layout, tmp_path):
    report = build.build(
        "voxceleb", tmp_path, manual_dir=mp4_layout, image_size=SIZE, num_workers=0
    )
    assert report.splits["train"].clips == 6 and report.splits["train"].identities == 3
    assert report.splits["train"].frames == 48 and report.splits["test"].frames == 32
    assert report.skipped == [] and not report.has_coeffs
    saved = json.loads((tmp_path / "voxceleb" / "build_report.json").read_text())
    assert saved["splits"]["test"] == {"clips": 4, "frames": 32, "identities": 2}

    records = read_all(tmp_path, "train")
    assert len(records) == 48
    example = records[9]
    assert set(example) == {"image", "clip", "identity", "frame", "clip_length"}
    assert example["image"].shape == (SIZE, SIZE, 3) and example["image"].dtype == np.uint8
    assert example["clip"] == fake_data.clip_stem(0, 1, 8).encode()
    assert example["identity"] == b"id00000"
    assert (example["frame"], example["clip_length"]) == (1, 8)
    # mp4 (h264) is lossy: the frame still decodes to where it came from.
    assert fake_data.decode_fake(example["image"]) == (0, 1, 1, False)

    source = frame_source.FrameSource(tmp_path, "voxceleb", "test")
    index = source.index
    assert index.identities == ("id00003", "id00004") and len(index.clips) == 4
    for clip, name in enumerate(index.clips):  # the index points at the right records
        for frame in (0, index.lengths[clip] - 1):
            record = source[source.record(clip, frame)]
            assert record["clip"] == name.encode() and record["frame"] == frame


def test_build_png_frames_are_stored_as_they_are(tmp_path):
    root = fake_data.write_fomm_layout(tmp_path / "raw", identities={"train": 2, "test": 1})
    build.build("voxceleb", tmp_path / "tfds", manual_dir=root, image_size=SIZE, num_workers=0)
    example = read_all(tmp_path / "tfds", "train")[3]
    np.testing.assert_array_equal(example["image"], fake_data.fake_frame(0, 0, 3, SIZE))


def test_parallel_build_equals_serial_and_resumes(mp4_layout, tmp_path, monkeypatch):
    build.build("voxceleb", tmp_path / "a", manual_dir=mp4_layout, image_size=SIZE, num_workers=0)
    build.build("voxceleb", tmp_path / "b", manual_dir=mp4_layout, image_size=SIZE, num_workers=2)
    a, b = read_all(tmp_path / "a", "train"), read_all(tmp_path / "b", "train")
    for i in (0, 17, 47):
        np.testing.assert_array_equal(a[i]["image"], b[i]["image"])

    # Resuming: only the missing staged clip is decoded again, and the data set is rewritten
    # only because its staged clips changed.
    staged = sorted((tmp_path / "a" / "voxceleb" / "staging" / "train").glob("*.npz"))
    staged[2].unlink()
    decoded = []
    original = media.decode_video
    monkeypatch.setattr(media, "decode_video", lambda p: decoded.append(p) or original(p))
    report = build.build(
        "voxceleb", tmp_path / "a", manual_dir=mp4_layout, image_size=SIZE, num_workers=0
    )
    assert [p.split("/")[-1] for p in map(str, decoded)] == [staged[2].stem + ".mp4"]
    assert report.assembled
    again = build.build(
        "voxceleb", tmp_path / "a", manual_dir=mp4_layout, image_size=SIZE, num_workers=0
    )
    assert not again.assembled and again.splits == report.splits


def write_png_clip(folder, frames):
    folder.mkdir(parents=True)
    for t, frame in enumerate(frames):
        frame.save(folder / f"{t:07d}.png")


def faststart_mp4(path):
    with av.open(str(path), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = SIZE, SIZE, "yuv420p"
        for t in range(8):
            frame = fake_data.fake_frame(0, 0, t, SIZE)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path.read_bytes()


def test_bad_inputs_are_skipped_with_a_warning_and_reported(tmp_path, caplog):
    root = fake_data.write_fomm_layout(
        tmp_path / "raw", identities={"train": 2}, video_format="mp4", size=SIZE
    )
    (root / "test").mkdir()  # empty partition
    train = root / "train"
    good = sorted(train.glob("*.mp4"))[0].read_bytes()
    bad = {
        "id09001#corrupt#000000#000008.mp4": None,
        "id09002#trunc#000000#000008.mp4": None,
        "id09003#empty#000000#000008.mp4": None,
        "id09004#big#000000#000008.mp4": None,
        "id09005#gray#000000#000008": None,
        "id09006#rgba#000000#000008": None,
        "id09007#deep#000000#000008": None,
        "not-a-fomm-name.mp4": None,
        "id09008#few#000000#000008": None,
        "id09009#noframes#000000#000008": None,
        "id09010#faststart#000000#000008.mp4": None,
    }
    (train / "id09001#corrupt#000000#000008.mp4").write_bytes(b"\x00\x01 not a video" * 100)
    (train / "id09002#trunc#000000#000008.mp4").write_bytes(good[: len(good) // 2])
    (train / "id09003#empty#000000#000008.mp4").write_bytes(b"")
    media.encode_video(
        train / "id09004#big#000000#000008.mp4", [np.zeros((80, 96, 3), np.uint8)] * 3
    )
    gray = Image.fromarray(np.full((SIZE, SIZE), 99, np.uint8))
    write_png_clip(train / "id09005#gray#000000#000008", [gray] * 3)
    write_png_clip(train / "id09006#rgba#000000#000008", [gray.convert("RGBA")] * 3)
    deep = Image.fromarray(np.full((SIZE, SIZE), 40000, np.uint16))
    write_png_clip(train / "id09007#deep#000000#000008", [deep] * 3)
    (train / "not-a-fomm-name.mp4").write_bytes(good)
    write_png_clip(train / "id09008#few#000000#000008", [gray.convert("RGB")])  # 1 frame
    write_png_clip(train / "id09009#noframes#000000#000008", [])
    # Index first (moov before mdat): the truncated file opens, its frames do not decode.
    faststart = faststart_mp4(tmp_path / "faststart.mp4")
    (train / "id09010#faststart#000000#000008.mp4").write_bytes(
        faststart[: len(faststart) * 3 // 4]
    )

    with caplog.at_level(logging.WARNING):
        report = build.build(
            "voxceleb", tmp_path / "tfds", manual_dir=root, image_size=SIZE, num_workers=2
        )
    reasons = {s["path"].split("/")[-1]: s["reason"] for s in report.skipped}
    assert set(reasons) == set(bad) | {"test"}
    assert "decode" in reasons["id09001#corrupt#000000#000008.mp4"]
    assert "96x80 frames, expected 64x64" in reasons["id09004#big#000000#000008.mp4"]
    assert "mode L" in reasons["id09005#gray#000000#000008"]
    assert "mode RGBA" in reasons["id09006#rgba#000000#000008"]
    assert (
        "16-bit" in reasons["id09007#deep#000000#000008"]
        or "I;16" in reasons["id09007#deep#000000#000008"]
    )
    assert "does not parse" in reasons["not-a-fomm-name.mp4"]
    assert "1 frames, need at least 2" in reasons["id09008#few#000000#000008"]
    assert "0 frames" in reasons["id09009#noframes#000000#000008"]
    assert "decode" in reasons["id09010#faststart#000000#000008.mp4"]
    assert report.empty_partitions == ["test"]
    for name in bad:  # every skip was logged, naming the file
        assert any(name in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    # The good clips made it; the data set has only the non-empty split.
    assert report.splits["train"].clips == 4 and "test" not in report.splits
    assert len(read_all(tmp_path / "tfds", "train")) == 32


def test_no_usable_clip_is_an_error_with_a_report(tmp_path):
    (tmp_path / "raw" / "train").mkdir(parents=True)
    (tmp_path / "raw" / "train" / "x#y#000000#000002.mp4").write_bytes(b"junk")
    with pytest.raises(ValueError, match="no usable clip"):
        build.build("voxceleb", tmp_path / "tfds", manual_dir=tmp_path / "raw", num_workers=0)
    saved = json.loads((tmp_path / "tfds" / "voxceleb" / "build_report.json").read_text())
    assert len(saved["skipped"]) == 2  # the junk clip and the missing test partition


def test_staged_clip_round_trip(tmp_path):
    clip = staging.StagedClip("a#b#000000#000002", "a", [b"x", b"yz"], np.ones((2, 257)), "src")
    path = staging.staged_path(tmp_path, "train", clip.clip)
    staging.write_staged(path, clip)
    back = staging.read_staged(path)
    assert back.frames == [b"x", b"yz"] and back.identity == "a" and back.coeffs.shape == (2, 257)
    assert staging.staged_info(path) == {
        "clip": clip.clip,
        "identity": "a",
        "source": "src",
        "num_frames": 2,
        "has_coeffs": True,
    }


def test_build_cli(mp4_layout, tmp_path, capsys):
    build.main(["--dataset", "voxceleb", "--manual_dir", str(mp4_layout), "--data_dir",
                str(tmp_path), "--image_size", str(SIZE), "--num_workers", "0",
                "--image_format", "jpeg", "--name", "vox_jpeg"])  # fmt: skip
    out = capsys.readouterr().out
    assert "train: 6 clips, 48 frames, 3 identities" in out and "skipped: 0 files" in out
    example = read_all(tmp_path, "test", name="vox_jpeg")[0]
    assert fake_data.decode_fake(example["image"])[:3] == (3, 0, 0)


# ------------------------------------------------------------------ generations of a build


def write_clip(folder, identity, clip, num_frames, size):
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        old.unlink()
    for t in range(num_frames):
        Image.fromarray(fake_data.fake_frame(identity, clip, t, size)).save(folder / f"{t:07d}.png")


def test_a_changed_option_or_source_restages_and_a_removed_source_is_dropped(tmp_path):
    """The issue's stale rebuilds: --image_size 64 then 128 kept the 64 px frames under a
    128 px schema; a source clip replaced (10 -> 20 frames) kept its old 10 frames."""
    raw = fake_data.write_fomm_layout(
        tmp_path / "raw", identities={"train": 2}, clips_per_identity=1, num_frames=10
    )
    (raw / "test").mkdir()
    data = tmp_path / "tfds"
    first = build.build("voxceleb", data, manual_dir=raw, image_size=SIZE, num_workers=0)
    assert first.splits["train"].frames == 20 and first.restaged == []

    # A source replaced: that clip alone is staged again, with its 20 frames.
    replaced = raw / "train" / fake_data.clip_stem(0, 0, 10)
    write_clip(replaced, 0, 0, 20, SIZE)
    report = build.build("voxceleb", data, manual_dir=raw, image_size=SIZE, num_workers=0)
    assert [(r["path"], r["reason"]) for r in report.restaged] == [
        (str(replaced), "source changed")
    ]
    assert report.splits["train"].frames == 30 and len(read_all(data, "train")) == 30

    # A removed source: its staged clip goes, and the report says so.
    gone = raw / "train" / fake_data.clip_stem(1, 0, 10)
    for f in gone.iterdir():
        f.unlink()
    gone.rmdir()
    report = build.build("voxceleb", data, manual_dir=raw, image_size=SIZE, num_workers=0)
    assert [p.split("/")[-1] for p in report.dropped] == [gone.name + ".npz"]
    assert report.splits["train"].clips == 1 and len(read_all(data, "train")) == 20

    # Another image size: every clip is staged again (the 64 px one is now skipped as the wrong
    # size), so the data set holds only the 128 px clip, never 64 px frames.
    write_clip(raw / "train" / fake_data.clip_stem(2, 0, 4), 2, 0, 4, 128)
    report = build.build("voxceleb", data, manual_dir=raw, image_size=128, num_workers=0)
    assert [r["reason"] for r in report.restaged] == ["image_size 64 -> 128"]
    reasons = {s["path"]: s["reason"] for s in report.skipped}
    assert "64x64 frames, expected 128x128" in reasons[str(replaced)]
    records = read_all(data, "train")
    assert len(records) == 4 and records[0]["image"].shape == (128, 128, 3)
    assert "restaged: 1 clips" in report.summary() and "image_size 64 -> 128" in report.summary()


def test_a_clip_file_and_a_frame_folder_of_one_name_is_an_error_naming_both(tmp_path):
    raw = fake_data.write_fomm_layout(tmp_path / "raw", identities={"train": 1, "test": 1})
    stem = fake_data.clip_stem(0, 0, 8)
    media.encode_video(raw / "train" / f"{stem}.mp4", [fake_data.fake_frame(0, 0, 0, SIZE)] * 2)
    with pytest.raises(ValueError, match="same clip") as info:
        build.build("voxceleb", tmp_path / "tfds", manual_dir=raw, image_size=SIZE, num_workers=0)
    assert f"train/{stem} and " in str(info.value) and f"train/{stem}.mp4" in str(info.value)


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:  # field 4 of /proc/PID/stat: the parent's pid
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_workers_of_a_killed_build_exit(tmp_path):
    """SIGKILL of the build's process: its staging workers (blocked on the task queue, whose
    write end they hold) must not live on."""
    script = (
        "import time, sys\n"
        "from data_pipeline import parallel\n"
        "print('ready', flush=True)\n"
        "list(parallel.parallel_map(time.sleep, [60, 60, 60, 60], 2))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"ready"
    deadline = time.monotonic() + 60
    while len(workers := _children(proc.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(workers) >= 2, workers
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 15
    while any(map(_alive, workers)) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [w for w in workers if _alive(w)]
    for w in left:  # clean up before failing
        os.kill(w, signal.SIGKILL)
    assert not left, f"workers {left} outlived their killed parent"


def test_a_build_killed_while_writing_leaves_no_incomplete_folder_after_the_next(tmp_path):
    raw = fake_data.write_fomm_layout(tmp_path / "raw", identities={"train": 2, "test": 1})
    data = tmp_path / "tfds"
    script = (
        "import os, signal, sys\n"
        "from data_pipeline import build, staging\n"
        "read, calls = staging.read_staged, []\n"
        "def killed(path):\n"
        "    calls.append(path)\n"
        "    if len(calls) == 3:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return read(path)\n"
        "staging.read_staged = killed\n"
        f"build.build('voxceleb', {str(data)!r}, manual_dir={str(raw)!r}, image_size={SIZE},"
        " num_workers=0)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-2000:]
    assert list((data / "voxceleb").glob("incomplete.*")), "the kill left nothing to clean up"

    report = build.build("voxceleb", data, manual_dir=raw, image_size=SIZE, num_workers=0)
    assert not list((data / "voxceleb").glob("incomplete.*"))
    assert len(report.removed_incomplete) == 1 and report.assembled
    assert len(read_all(data, "train")) == 32
