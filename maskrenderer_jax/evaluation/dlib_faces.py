"""Real face tools for the evaluation metrics, on the host: dlib's face detectors, its 68- and
5-point landmark predictors and its 128-D face-recognition ResNet (the files shipped by the
face_recognition_models package), with OpenCV's Haar cascade as a third detector.

Pixel convention (every output and every `boxes` input): continuous (x, y) pixel coordinates of
the input image with integer values at pixel centres, x right, y down: pixel (row i, column j)
covers [j - 0.5, j + 0.5] x [i - 0.5, i + 0.5]. This is dlib's and OpenCV's convention;
maskrenderer_jax.face3d.render puts centres at +0.5 instead, so its landmarks minus 0.5 compare
with these. Boxes are outer edges (x0, y0, x1, y1): dlib's inclusive rectangle (l, t, r, b) is
(l - 0.5, t - 0.5, r + 0.5, b + 0.5), so x1 - x0 is its width in pixels.

Small images: dlib's HOG detector finds faces larger than about 80 x 80 px and its
models were trained on photos, so every image whose shorter side is below `min_size` (256) is
first resized up (bilinear, OpenCV's half-pixel-centre mapping) and all coordinates are mapped
back. dlib rounds landmarks to whole pixels of the image it runs on, so on upsampled images the
landmarks are finer than a pixel of the input.

Measured on the project's synthetic heads (data_pipeline.synthetic_heads, 64 frames of 8
identities at 64 / 128 / 256 px): 'hog' finds 47 / 47 / 44% (whole identities are never found),
'haar' 44 / 41 / 33%, 'cnn' 100%; on the faces found, dlib's 68 points are ~4% of the image width
from the 3DMM's ground-truth landmarks (eyes and jaw worst): the models know photos, not renders.
"""

import importlib
import importlib.util
from pathlib import Path

import numpy as np

DETECTORS = ("hog", "cnn", "haar")
REQUIREMENTS_HINT = "pip install -r requirements-eval.txt"
MODEL_FILES = {
    "landmarks68": "shape_predictor_68_face_landmarks.dat",
    "landmarks5": "shape_predictor_5_face_landmarks.dat",
    "recognition": "dlib_face_recognition_resnet_model_v1.dat",
    "cnn": "mmod_human_face_detector.dat",
}
HAAR_CASCADE = "haarcascade_frontalface_default.xml"
# dlib's standard recognition recipe (dlib/examples/dnn_face_recognition_ex.cpp, face_recognition):
# a 150 x 150 chip aligned on the 5 points, 25% padding around the face.
CHIP_SIZE, CHIP_PADDING = 150, 0.25


class FaceModelsMissingError(FileNotFoundError):
    """A face tool's package or model file is not installed; the message names it."""


def _import(module: str):
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise FaceModelsMissingError(
            f"the face tools need the Python module '{module}' ({e}): {REQUIREMENTS_HINT}"
        ) from e


def default_model_dir() -> Path:
    """face_recognition_models' `models/` folder, located without importing the package (its
    __init__ imports pkg_resources, which setuptools >= 81 no longer ships)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FaceModelsMissingError(
            "face_recognition_models is not installed (it ships "
            f"face_recognition_models/models/{MODEL_FILES['landmarks68']} and dlib's other "
            f"model files): {REQUIREMENTS_HINT}"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "models"


def model_path(name: str, model_dir: str | Path | None = None) -> Path:
    """The file of one of MODEL_FILES' models; a clear error if it is not there."""
    path = Path(model_dir if model_dir is not None else default_model_dir()) / MODEL_FILES[name]
    if not path.is_file():
        raise FaceModelsMissingError(f"{path}: no such model file: {REQUIREMENTS_HINT}")
    return path


def to_uint8(images) -> np.ndarray:
    """[B, H, W, 3] float RGB in [0, 1] (or uint8) -> [B, H, W, 3] C-contiguous uint8."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected [B, H, W, 3] RGB images, got shape {images.shape}")
    if images.dtype != np.uint8:
        images = np.round(np.clip(images.astype(np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)
    return np.ascontiguousarray(images)


class DlibFaces:
    """dlib's face detector, 68/5-point landmarks and 128-D identity embeddings, batched.

    Every method takes [B, H, W, 3] float32 RGB images in [0, 1] and loops over the batch on
    the host. Rows without a face come back with found False, NaN boxes/points and zero
    embeddings; nothing raises for a face that is not there.
    """

    def __init__(
        self,
        detector: str = "hog",
        *,
        min_size: int = 256,
        upsample_num_times: int = 0,
        model_dir: str | Path | None = None,
        num_jitters: int = 0,
    ):
        """Loads the model files (once; ~0.6 s, mostly the 100 MB 68-point predictor).

        Args:
          detector: 'hog' (dlib.get_frontal_face_detector), 'cnn' (dlib's MMOD CNN, ~4x to
            20x slower on a CPU, far better on rendered faces) or 'haar' (OpenCV's
            haarcascade_frontalface_default; its boxes are not the ones dlib's landmark
            predictors were trained on).
          min_size: images whose shorter side is smaller are resized up to it first.
          upsample_num_times: dlib's extra pyramid-up levels for 'hog' / 'cnn' (each doubles
            the size and ~4x the time); min_size usually makes it unnecessary.
          model_dir: folder holding MODEL_FILES (default: face_recognition_models' models/).
          num_jitters: dlib's embedding jitter (0: the plain descriptor).
        """
        if detector not in DETECTORS:
            raise ValueError(f"detector must be one of {DETECTORS}, got {detector!r}")
        self.detector, self.min_size = detector, int(min_size)
        self.upsample_num_times, self.num_jitters = int(upsample_num_times), int(num_jitters)
        dlib, self._cv2 = _import("dlib"), _import("cv2")
        self._dlib = dlib
        needed = ["landmarks68", "landmarks5", "recognition"] + (
            ["cnn"] if detector == "cnn" else []
        )
        paths = {name: model_path(name, model_dir) for name in needed}  # all errors up front
        self._predictor68 = dlib.shape_predictor(str(paths["landmarks68"]))
        self._predictor5 = dlib.shape_predictor(str(paths["landmarks5"]))
        self._recognizer = dlib.face_recognition_model_v1(str(paths["recognition"]))
        if detector == "hog":
            self._detector = dlib.get_frontal_face_detector()
        elif detector == "cnn":
            self._detector = dlib.cnn_face_detection_model_v1(str(paths["cnn"]))
        else:
            cascade = Path(self._cv2.data.haarcascades) / HAAR_CASCADE
            self._detector = self._cv2.CascadeClassifier(str(cascade))
            if not cascade.is_file() or self._detector.empty():
                raise FaceModelsMissingError(
                    f"{cascade}: no such Haar cascade (opencv-python-headless 4.x ships it): "
                    f"{REQUIREMENTS_HINT}"
                )

    # -- public API ---------------------------------------------------------------------------

    def detect(self, images) -> tuple[np.ndarray, np.ndarray]:
        """The largest face of each image.

        Args:
          images: [B, H, W, 3] float32 RGB in [0, 1].
        Returns:
          (boxes [B, 4] float32 (x0, y0, x1, y1) outer edges in input pixels (NaN where no
           face), found [B] bool).
        """
        images = to_uint8(images)
        boxes = np.full((len(images), 4), np.nan, np.float32)
        for i, image in enumerate(images):
            work, scale = self._working(image)
            rect = self._detect_one(work)
            if rect is not None:
                edges = np.array(
                    [rect.left() - 0.5, rect.top() - 0.5, rect.right() + 0.5, rect.bottom() + 0.5]
                )
                boxes[i] = _to_input(edges.reshape(2, 2), scale).reshape(4)
        return boxes, ~np.isnan(boxes[:, 0])

    def landmarks68(self, images, boxes=None) -> tuple[np.ndarray, np.ndarray]:
        """dlib's iBUG-68 landmarks (0-16 jaw, 17-26 brows, 27-35 nose, 36-47 eyes, 48-67 mouth;
        subject's right side first).

        Args:
          images: [B, H, W, 3] float32 RGB in [0, 1].
          boxes: optional [B, 4] (x0, y0, x1, y1) face boxes in input pixels as `detect` gives
            them (NaN rows: no face); None detects.
        Returns:
          (points [B, 68, 2] float32 (x, y) input pixels, NaN where no face; found [B] bool).
        """
        return self._landmarks(images, boxes, self._predictor68, 68)

    def landmarks5(self, images, boxes=None) -> tuple[np.ndarray, np.ndarray]:
        """dlib's 5 points: [0, 1] the subject's left eye outer, inner corner, [2, 3] the right
        eye outer, inner corner (iBUG 45, 42, 36, 39), [4] below the nose tip. As landmarks68.
        """
        return self._landmarks(images, boxes, self._predictor5, 5)

    def embedding(self, images, boxes=None) -> tuple[np.ndarray, np.ndarray]:
        """dlib's 128-D face descriptor (ResNet-29 on the 5-point aligned 150 px chip).

        Same person when the euclidean distance is below 0.6 (dlib's threshold; 99.38% on LFW).

        Args:
          images: [B, H, W, 3] float32 RGB in [0, 1].
          boxes: as landmarks68.
        Returns:
          (emb [B, 128] float32 (not unit-normalised), zeros where no face; found [B] bool).
        """
        emb = np.zeros((len(images), 128), np.float32)
        chips, rows = [], []
        for i, work, _, rect in self._faces(images, boxes):
            shape = self._predictor5(work, rect)
            chips.append(self._dlib.get_face_chip(work, shape, CHIP_SIZE, CHIP_PADDING))
            rows.append(i)
        if chips:
            emb[rows] = np.asarray(
                self._recognizer.compute_face_descriptor(chips, self.num_jitters), np.float32
            )
        found = np.zeros(len(images), bool)
        found[rows] = True
        return emb, found

    # -- helpers ------------------------------------------------------------------------------

    def _working(self, image: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
        """The image dlib runs on (shorter side >= min_size) and its (x, y) scale."""
        h, w = image.shape[:2]
        factor = self.min_size / min(h, w)
        if factor <= 1.0:
            return image, (1.0, 1.0)
        size = (round(w * factor), round(h * factor))
        work = self._cv2.resize(image, size, interpolation=self._cv2.INTER_LINEAR)
        return work, (size[0] / w, size[1] / h)

    def _detect_one(self, work: np.ndarray):
        """The largest detection (ties: the higher score) as a dlib.rectangle, or None."""
        if self.detector == "hog":
            rects, scores, _ = self._detector.run(work, self.upsample_num_times, 0.0)
            found = list(zip(rects, scores, strict=True))
        elif self.detector == "cnn":
            found = [(d.rect, d.confidence) for d in self._detector(work, self.upsample_num_times)]
        else:
            gray = self._cv2.cvtColor(work, self._cv2.COLOR_RGB2GRAY)
            found = [
                (self._dlib.rectangle(int(x), int(y), int(x + w - 1), int(y + h - 1)), 0.0)
                for x, y, w, h in self._detector.detectMultiScale(gray, 1.1, 3, minSize=(40, 40))
            ]
        if not found:
            return None
        return max(found, key=lambda rs: (rs[0].width() * rs[0].height(), rs[1]))[0]

    def _faces(self, images, boxes):
        """Yields (row, working image, its scale, the face's dlib.rectangle in working pixels)
        for each row with a face (detected, or from a finite box)."""
        images = to_uint8(images)
        if boxes is not None:
            boxes = np.asarray(boxes, np.float64)
            if boxes.shape != (len(images), 4):
                raise ValueError(f"boxes must be [{len(images)}, 4], got shape {boxes.shape}")
        for i, image in enumerate(images):
            if boxes is not None and not np.all(np.isfinite(boxes[i])):
                continue
            work, scale = self._working(image)
            if boxes is None:
                rect = self._detect_one(work)
                if rect is None:
                    continue
            else:
                (x0, y0), (x1, y1) = _to_working(boxes[i].reshape(2, 2), scale)
                rect = self._dlib.rectangle(
                    round(x0 + 0.5), round(y0 + 0.5), round(x1 - 0.5), round(y1 - 0.5)
                )
            yield i, work, scale, rect

    def _landmarks(self, images, boxes, predictor, num_points: int):
        points = np.full((len(images), num_points, 2), np.nan, np.float32)
        for i, work, scale, rect in self._faces(images, boxes):
            parts = np.array([(p.x, p.y) for p in predictor(work, rect).parts()], np.float64)
            points[i] = _to_input(parts, scale)
        return points, ~np.isnan(points[:, 0, 0])


def _to_input(xy: np.ndarray, scale: tuple[float, float]) -> np.ndarray:
    """Working-image (x, y) -> input-image (x, y), centres at integers on both (cv2.resize maps
    input x to (x + 0.5) * s - 0.5)."""
    return (xy + 0.5) / np.asarray(scale) - 0.5


def _to_working(xy: np.ndarray, scale: tuple[float, float]) -> np.ndarray:
    return (xy + 0.5) * np.asarray(scale) - 0.5
