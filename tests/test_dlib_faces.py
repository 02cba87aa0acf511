"""dlib face tools on a real photo (scikit-image's public-domain astronaut, Eileen Collins)."""

import cv2
import numpy as np
import pytest
import skimage.data

from maskrenderer_jax.evaluation import dlib_faces

# 256 x 256 crops of the 512 x 512 astronaut around her face (dlib's HOG box there: x 175-266,
# y 76-170); SHIFTED starts (DX, DY) pixels up-left, so its content sits (DX, DY) further on.
X, Y, DX, DY = 100, 20, 3, 5


@pytest.fixture(scope="module")
def faces():
    return dlib_faces.DlibFaces()


@pytest.fixture(scope="module")
def photo():
    return skimage.data.astronaut().astype(np.float32) / 255.0


@pytest.fixture(scope="module")
def crops(photo):
    """[2, 256, 256, 3]: the face crop and the same crop moved by (-DX, -DY)."""
    a = photo[Y : Y + 256, X : X + 256]
    b = photo[Y - DY : Y - DY + 256, X - DX : X - DX + 256]
    return np.stack([a, b])


def test_astronaut_face_and_landmarks(faces, crops):
    boxes, found = faces.detect(crops[:1])
    assert found.tolist() == [True]
    x0, y0, x1, y1 = boxes[0]
    assert abs((x0 + x1) / 2 - (220 - X)) < 10 and abs((y0 + y1) / 2 - (123 - Y)) < 10
    assert 70 < x1 - x0 < 110
    points, found68 = faces.landmarks68(crops[:1])
    assert found68.tolist() == [True] and points.shape == (1, 68, 2)
    p = points[0]
    margin = 0.15 * (x1 - x0)  # dlib's jaw line may leave the HOG box a little
    assert np.all((p[:, 0] > x0 - margin) & (p[:, 0] < x1 + margin))
    assert np.all((p[:, 1] > y0 - margin) & (p[:, 1] < y1 + margin))
    assert p[36:48, 1].max() < p[48:68, 1].min()  # eyes above the mouth
    assert p[36:42, 0].mean() < p[42:48, 0].mean()  # subject's right eye on the image's left
    five, found5 = faces.landmarks5(crops[:1])
    assert found5.tolist() == [True] and five.shape == (1, 5, 2)
    # 5-point order: subject's left eye outer, inner, right eye outer, inner, under the nose.
    np.testing.assert_allclose(five[0, :4], p[[45, 42, 36, 39]], atol=4.0)
    assert p[31:36, 1].mean() - 6 < five[0, 4, 1] < p[51, 1]


def test_shifted_photo_gives_shifted_landmarks_and_same_identity(faces, crops):
    points, found = faces.landmarks68(crops)
    assert found.all()
    error = np.linalg.norm(points[1] - (points[0] + [DX, DY]), axis=-1)
    assert error.mean() < 1.5, error.mean()
    emb, found = faces.embedding(crops)
    assert found.all() and emb.shape == (2, 128) and emb.dtype == np.float32
    assert np.linalg.norm(emb[0] - emb[1]) < 0.3


def test_small_image_is_upsampled_and_mapped_back(faces, crops):
    """At 64 px (face ~22 px, far below HOG's 80 px window) the face is still found, and the
    landmarks land where the 256 px ones say in the pixel-centre convention: mapping x -> x / 4
    instead of (x + 0.5) / 4 - 0.5 would shift them by 0.375 px (measured: 0.3-0.45)."""
    big, _ = faces.landmarks68(crops[:1])
    small = cv2.resize(crops[0], (64, 64), interpolation=cv2.INTER_AREA)[None]
    points, found = faces.landmarks68(small)
    assert found.all()
    offset = points - ((big + 0.5) / 4 - 0.5)
    assert np.linalg.norm(offset, axis=-1).mean() < 0.5  # measured 0.2
    assert np.all(np.abs(offset.mean(axis=(0, 1))) < 0.15)  # measured < 0.07
    emb_big, _ = faces.embedding(crops[:1])
    small = cv2.resize(crops[0], (128, 128), interpolation=cv2.INTER_AREA)[None]
    emb_small, found = faces.embedding(small)
    assert found.all() and np.linalg.norm(emb_small - emb_big) < 0.6  # measured 0.24


def test_given_boxes_round_trip(faces, crops):
    """landmarks68(images, detect(images)) == landmarks68(images), at 256 px and upsampled."""
    small = np.stack([cv2.resize(c, (160, 160), interpolation=cv2.INTER_AREA) for c in crops])
    for images in (crops, small):
        boxes, found = faces.detect(images)
        assert found.all()
        np.testing.assert_array_equal(
            faces.landmarks68(images, boxes)[0], faces.landmarks68(images)[0]
        )


def test_no_face_gives_nan_and_found_false(faces):
    grey = np.full((2, 96, 96, 3), 0.5, np.float32)
    boxes, found = faces.detect(grey)
    assert not found.any() and np.isnan(boxes).all()
    for points, found in (faces.landmarks68(grey), faces.landmarks5(grey)):
        assert not found.any() and np.isnan(points).all()
    emb, found = faces.embedding(grey)
    assert not found.any() and emb.shape == (2, 128) and not emb.any()


def test_batch_mixing_faces_and_no_faces_keeps_rows(faces, crops):
    grey = np.full_like(crops[0], 0.5)
    batch = np.stack([grey, crops[0], grey, crops[1]])
    points, found = faces.landmarks68(batch)
    assert found.tolist() == [False, True, False, True]
    assert np.isnan(points[[0, 2]]).all()
    np.testing.assert_array_equal(points[[1, 3]], faces.landmarks68(crops)[0])
    boxes, _ = faces.detect(batch)
    emb, found = faces.embedding(batch, boxes)
    assert found.tolist() == [False, True, False, True] and not emb[[0, 2]].any()
    np.testing.assert_allclose(emb[[1, 3]], faces.embedding(crops)[0], atol=1e-5)


def test_missing_model_file_names_it(monkeypatch, tmp_path):
    with pytest.raises(dlib_faces.FaceModelsMissingError) as e:
        dlib_faces.DlibFaces(model_dir=tmp_path)
    assert str(tmp_path / "shape_predictor_68_face_landmarks.dat") in str(e.value)
    assert "pip install -r requirements-eval.txt" in str(e.value)
    monkeypatch.setattr(dlib_faces, "default_model_dir", lambda: tmp_path)
    with pytest.raises(FileNotFoundError, match="shape_predictor_68_face_landmarks.dat"):
        dlib_faces.DlibFaces()


def test_bad_arguments_raise(faces, crops):
    with pytest.raises(ValueError, match="detector must be one of"):
        dlib_faces.DlibFaces("mtcnn")
    with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
        faces.detect(crops[0])
    with pytest.raises(ValueError, match="boxes must be"):
        faces.landmarks68(crops, np.zeros((1, 4)))
