"""python -m maskrenderer_jax.animate: FOMM checkpoints against FOMM's own relative animation,
the face crop and paste-back on a real photo, the audio track, streaming, and bad input."""

import av
import numpy as np
import pytest
import torch
from PIL import Image
from scipy.spatial import ConvexHull

from configs.common import load_config
from converters import fomm
from maskrenderer_jax import cli_errors, media
from maskrenderer_jax.animate import main as animate
from maskrenderer_jax.inference.reenact import Reenactor
from maskrenderer_jax.train.checkpoint import write_run_config
from tests import torch_utils

SIZE = 64  # configs/tiny.py


@pytest.fixture(scope="module")
def fomm_files(tmp_path_factory):
    """A FOMM .pth.tar of the tiny FOMM graph (the torch mirror, random weights), the mirror
    itself, and a smooth source PNG plus a folder of 5 driving PNGs at the model's size."""
    root = tmp_path_factory.mktemp("fomm")
    config = load_config("configs/tiny.py:fomm")
    nets = torch_utils.random_fomm(config.model, seed=0)
    torch.save(torch_utils.checkpoint_of(nets), root / "fomm.pth.tar")
    y, x = np.mgrid[0 : 1 : SIZE * 1j, 0 : 1 : SIZE * 1j]
    images = []
    for t in range(6):  # a blob moving and growing over a gradient
        blob = np.exp(-((x - 0.4 - 0.05 * t) ** 2 + (y - 0.5) ** 2) / (0.02 + 0.004 * t))
        images.append(np.stack([x, y, blob], -1) * 0.8 + 0.1)
    images = media.to_uint8(np.stack(images))
    media.write_png(root / "source.png", images[0][:, ::-1])
    for t in range(1, 6):
        media.write_png(root / "driving" / f"{t:03d}.png", images[t])
    return {"root": root, "config": config, "nets": nets, "checkpoint": root / "fomm.pth.tar"}


@torch.no_grad()
def fomm_make_animation(nets, source, driving, adapt_movement_scale):
    """FOMM demo.py's make_animation(relative=True) with animate.normalize_kp, on the mirror."""
    kp_detector, generator, _ = nets
    source = torch_utils.nchw(source[None])
    driving = torch_utils.nchw(driving)
    kp_source = kp_detector(source)
    kp_initial = kp_detector(driving[:1])
    scale = 1.0
    if adapt_movement_scale:
        source_area = ConvexHull(kp_source["value"][0].numpy()).volume
        driving_area = ConvexHull(kp_initial["value"][0].numpy()).volume
        scale = np.sqrt(source_area) / np.sqrt(driving_area)
    out = []
    for i in range(driving.shape[0]):
        kp_driving = kp_detector(driving[i : i + 1])
        kp_norm = dict(kp_driving)
        kp_norm["value"] = (kp_driving["value"] - kp_initial["value"]) * scale + kp_source["value"]
        change = torch.matmul(kp_driving["jacobian"], torch.inverse(kp_initial["jacobian"]))
        kp_norm["jacobian"] = torch.matmul(change, kp_source["jacobian"])
        prediction = generator(source, kp_source=kp_source, kp_driving=kp_norm)["prediction"]
        out.append(torch_utils.nhwc(prediction)[0])
    return np.stack(out)


def run(*argv):
    """The command as `python -m` runs it (user errors: exit 2)."""
    return cli_errors.run(animate, [str(a) for a in argv])


def test_fomm_checkpoint_equals_fomm_relative_animation(fomm_files, tmp_path):
    root = fomm_files["root"]
    out = tmp_path / "result.npz"
    summary = run("--source", root / "source.png", "--driving", root / "driving",
                  "--checkpoint", fomm_files["checkpoint"], "--config", "configs/tiny.py:fomm",
                  "--relative", "--adapt-scale", "--no-crop", "--batch-size", 2,
                  "--out", out)  # fmt: skip
    frames = np.load(out)["frames"]
    source = media.read_image(root / "source.png").astype(np.float32) / 255
    driving = np.stack([media.read_image(p) for p in media.frame_files(root / "driving")]) / 255
    want = fomm_make_animation(fomm_files["nets"], source, driving.astype(np.float32), True)
    assert frames.shape == (5, SIZE, SIZE, 3) and frames.dtype == np.float32
    np.testing.assert_allclose(frames, want, atol=1e-4)
    assert np.abs(frames[1:] - frames[:1]).max() > 1e-3  # the motion does move the frames
    assert summary["frames"] == 5 and summary["out"] == str(out)


def test_streaming_equals_batch(fomm_files):
    config = fomm_files["config"]
    variables = fomm.import_checkpoint(torch_utils.checkpoint_of(fomm_files["nets"]),
                                       config.model)["model"]  # fmt: skip
    rng = np.random.default_rng(0)
    source = rng.uniform(size=(SIZE, SIZE, 3)).astype(np.float32)
    driving = rng.uniform(size=(5, SIZE, SIZE, 3)).astype(np.float32)
    reenactor = Reenactor(config.model, chunk_size=3)
    batch = reenactor(variables, source, driving, adapt_movement_scale=True)
    stream = reenactor.start(variables, source, adapt_movement_scale=True)
    frames = np.stack([stream.step(frame) for frame in driving])
    np.testing.assert_allclose(frames, batch, atol=1e-5)


def write_clip_with_tone(path, frames, fps=5, sample_rate=16000):
    """An H.264 mp4 of `frames` with an AAC 440 Hz tone as long as the video."""
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        audio = container.add_stream("aac", rate=sample_rate)
        for frame in frames:
            container.mux(video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(video.encode())
        t = np.arange(sample_rate * len(frames) // fps) / sample_rate
        tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]
        for start in range(0, tone.shape[1], 1024):
            chunk = av.AudioFrame.from_ndarray(tone[:, start : start + 1024], format="fltp",
                                               layout="mono")  # fmt: skip
            chunk.sample_rate, chunk.pts = sample_rate, start
            container.mux(audio.encode(chunk))
        container.mux(audio.encode())


def audio_seconds(path) -> float:
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        samples = sum(frame.samples for frame in container.decode(stream))
        return samples / stream.rate


@pytest.fixture(scope="module")
def astronaut_clip(tmp_path_factory):
    """skimage's astronaut (512 x 512) and a driving mp4 with a tone: 320 px windows around
    her face, moving a few pixels per frame."""
    from skimage import data

    root = tmp_path_factory.mktemp("astronaut")
    photo = data.astronaut()
    media.write_png(root / "photo.png", photo)
    frames = np.stack([photo[10 + 4 * t : 330 + 4 * t, 60 + 3 * t : 380 + 3 * t] for t in range(5)])
    write_clip_with_tone(root / "driving.mp4", frames)
    return {"root": root, "photo": photo}


def test_crop_and_paste_back_on_a_photo(fomm_files, astronaut_clip, tmp_path):
    root, photo = astronaut_clip["root"], astronaut_clip["photo"]
    out = tmp_path / "pasted.npz"
    summary = run("--source", root / "photo.png", "--driving", root / "driving.mp4",
                  "--checkpoint", fomm_files["checkpoint"], "--config", "configs/tiny.py:fomm",
                  "--paste-back", "--batch-size", 2, "--out", out)  # fmt: skip
    assert summary["lost_face_frames"] == 0  # the face was found in every frame
    frames = np.load(out)["frames"]
    assert frames.shape == (5, *photo.shape)  # the photo's size
    photo_float = photo.astype(np.float32) / 255
    far = np.s_[:, 420:, :]  # her suit, far below the face
    np.testing.assert_array_equal(
        frames[far], np.broadcast_to(photo_float[far[1:]], frames[far].shape)
    )
    face = np.s_[:, 80:160, 180:260]  # her face (x ~ 170-270, y ~ 60-190 in the photo)
    assert np.abs(frames[face] - photo_float[face[1:]]).mean() > 0.02  # animated, pasted back


def test_mp4_output_keeps_the_audio_track(fomm_files, astronaut_clip, tmp_path):
    root = astronaut_clip["root"]
    out = tmp_path / "result.mp4"
    run("--source", root / "photo.png", "--driving", root / "driving.mp4",
        "--checkpoint", fomm_files["checkpoint"], "--config", "configs/tiny.py:fomm",
        "--side-by-side", "--batch-size", 2, "--out", out)  # fmt: skip
    frames = media.read_frames(out)
    assert frames.shape == (5, SIZE, 3 * SIZE, 3)  # source | driving | result
    assert media.video_info(out).fps == 5
    expected = audio_seconds(root / "driving.mp4")
    assert expected == pytest.approx(1.0, abs=0.1)
    assert audio_seconds(out) == pytest.approx(expected, abs=1e-3)


def test_bad_input_is_one_error_and_no_output(fomm_files, tmp_path, capsys):
    root = fomm_files["root"]
    base = ["--checkpoint", fomm_files["checkpoint"], "--config", "configs/tiny.py:fomm"]
    noise = (np.random.default_rng(0).uniform(size=(SIZE, SIZE, 3)) * 255).astype(np.uint8)
    Image.fromarray(noise).save(tmp_path / "noise.png")
    (tmp_path / "empty").mkdir()
    np.savez(tmp_path / "zero.npz", frames=np.zeros((0, SIZE, SIZE, 3), np.float32))
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    run_dir = tmp_path / "run"  # a training run of the tiny FOMM (its config.json)
    run_dir.mkdir()
    write_run_config(run_dir, fomm_files["config"])
    out = tmp_path / "out.npz"
    cases = {
        "no .png/.jpg/.jpeg files": ["--driving", tmp_path / "empty"],
        "no frames": ["--driving", tmp_path / "zero.npz"],
        "ffmpeg cannot": ["--driving", tmp_path / "broken.mp4"],
        "no face found": ["--driving", root / "driving", "--source", tmp_path / "noise.png"],
        "does not exist": ["--driving", root / "driving", "--out", tmp_path / "nope" / "x.mp4"],
        "kp_detector": ["--driving", root / "driving", "--config", "configs/tiny.py"],
        "trained with another model": [
            "--driving",
            root / "driving",
            "--checkpoint",
            run_dir,
            "--config",
            "configs/tiny.py",
        ],  # fmt: skip
    }
    for expected, argv in cases.items():
        crop = [] if expected == "no face found" else ["--no-crop"]
        argv = ["--source", root / "source.png", "--out", out, *crop, *base, *argv]
        with pytest.raises(SystemExit) as exit_info:
            run(*argv)
        assert exit_info.value.code == 2, expected
        assert expected in capsys.readouterr().err, expected
        assert not out.exists() and not list(tmp_path.glob(".*tmp*")), expected


def test_readme_reenacting_example_runs():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Reenacting", 1)[1].split("\n## ", 1)[0]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    namespace = {}
    exec(code, namespace)
    frames, live = namespace["frames"], namespace["live"]
    assert frames.shape == (4, SIZE, SIZE, 3)
    np.testing.assert_allclose(live, frames, atol=1e-5)


@pytest.mark.slow
def test_maskrenderer_checkpoint_regresses_coefficients_online(astronaut_clip, tmp_path, caplog):
    """A MaskRenderer variables directory, the face cropped, Deep3DFace (random: warned) on
    the 5-landmark-aligned crops of the photo and every frame."""
    import jax

    from maskrenderer_jax import params_io
    from maskrenderer_jax.models import maskrenderer as mr

    config = load_config("configs/tiny.py")
    variables = jax.jit(lambda k: mr.init_variables(config.model, k))(jax.random.key(0))
    params_io.save_variables(tmp_path / "variables", variables)
    root, out = astronaut_clip["root"], tmp_path / "mr.npz"
    summary = run("--source", root / "photo.png", "--driving", root / "driving.mp4",
                  "--checkpoint", tmp_path / "variables", "--config", "configs/tiny.py",
                  "--batch-size", 2, "--out", out)  # fmt: skip
    frames = np.load(out)["frames"]
    assert frames.shape == (5, SIZE, SIZE, 3) and np.isfinite(frames).all()
    assert summary["lost_face_frames"] == 0
    assert "Deep3DFace ReconNet has RANDOM weights" in caplog.text
