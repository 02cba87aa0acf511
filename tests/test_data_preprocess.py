"""data_pipeline.preprocess: raw videos cropped by vox-metadata.csv's boxes into the FOMM
layout (through PyAV), on raw videos made in the test."""

import numpy as np
import pytest

from data_pipeline import preprocess
from maskrenderer_jax import media

HEADER = "video_id,start,end,bbox,fps,width,height,partition,person_id\n"


def raw_frame(t, width=160, height=120):
    """A dark frame with a bright square (x 40-80, y 20-60 px) whose green encodes t."""
    frame = np.full((height, width, 3), 30, np.uint8)
    frame[20:60, 40:80] = (200, 10 * t + 20, 100)
    return frame


@pytest.fixture
def raw(tmp_path):
    media.encode_video(tmp_path / "vidA.mp4", [raw_frame(t) for t in range(12)], fps=25)
    # Reference resolution 320x240 (twice the video's): the square is at 80-160 x 40-120.
    (tmp_path / "meta.csv").write_text(
        HEADER
        + "vidA,2,8,80-40-160-120,25,320,240,train,id10001\n"
        + "vidA,5,10,0-0-320-240,25,320,240,test,id10001\n"
        + "vidA,40,50,80-40-160-120,25,320,240,train,id10001\n"  # past the video's end
        + "vidB,0,5,0-0-10-10,25,320,240,train,id10002\n"  # no raw video
    )
    return tmp_path


def test_crops_by_metadata_box_and_frame_range(raw, tmp_path):
    out = tmp_path / "out"
    report = preprocess.preprocess(raw / "meta.csv", raw, out, image_size=32, num_workers=0)
    assert len(report["written"]) == 2 and len(report["skipped"]) == 2
    crop = media.decode_video(out / "train" / "id10001#vidA#000002#000008.mp4")
    assert len(crop) == 6  # frames 2..7
    for t, frame in zip(range(2, 8), crop, strict=True):
        # The box is the square: the crop is filled with its colour (h264 is near-lossless).
        np.testing.assert_allclose(frame[4:-4, 4:-4].mean((0, 1)), (200, 10 * t + 20, 100), atol=6)
    whole = media.decode_video(out / "test" / "id10001#vidA#000005#000010.mp4")
    assert len(whole) == 5 and whole[0].shape == (32, 32, 3)
    assert whole[0][2, 2].mean() < 50 and whole[0][10, 12, 0] > 150  # background, square
    reasons = sorted(s["reason"] for s in report["skipped"])
    assert "no frames" in reasons[0] and "missing" in reasons[1]


def test_resumes_and_writes_png_folders(raw, tmp_path):
    out = tmp_path / "out"
    argv = ["--metadata", str(raw / "meta.csv"), "--raw_dir", str(raw), "--out_dir", str(out),
            "--image_size", "32", "--format", "png", "--num_workers", "2"]  # fmt: skip
    first = preprocess.main(argv)
    folder = out / "train" / "id10001#vidA#000002#000008"
    assert len(first["written"]) == 2 and len(media.frame_files(folder)) == 6
    again = preprocess.main(argv)
    assert again["written"] == [] and again["existing"] == 2


def test_clip_box_is_scaled_and_clipped():
    chunk = preprocess.Chunk("p", "v", 0, 1, (-20, 10, 700, 200), 25.0, (640, 360), "train")
    assert preprocess.crop_box(chunk, 320, 180) == (0, 5, 320, 100)
