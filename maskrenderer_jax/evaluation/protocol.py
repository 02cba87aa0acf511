"""The paper's evaluation protocols run on a model (or a baseline), batched and sharded.

- 'self' (Table 2; FOMM's reconstruction.py): frame 0 of each test clip is the source and
  every later frame drives it with its own absolute keypoints; the driving frame is the ground
  truth: L1, PSNR, SSIM, LPIPS (and masked PSNR/SSIM where the data set knows the face mask),
  AKD and NME (landmarks), AID and CSIM (identity), EPD and PRMSE (3DMM pose/expression).
- 'cross' (Table 1): a source of another identity driven with relative motion from the clip's
  first frame (FOMM's animate): ISIM (identity of source vs output), KSIM (landmarks of
  driving vs output), PSIM (head pose of driving vs output), FID (output vs source images).

The model runs on every device of every process (the batch over the mesh's data axes, as in
training); the face tools (landmarks, identity) run on each process's own rows on the host;
per-frame values are gathered and combined by `metrics.aggregate`.

On synthetic_heads, whose frames are rendered from known 3DMM coefficients, the ground-truth
face mask gives the masked metrics, and each backend's error against the ground truth on the
driving frames is reported too (the floor under AKD, NME and PRMSE).
"""

import dataclasses
import logging
import time
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from data_pipeline import sources
from data_pipeline.eval_iter import make_eval_iter, protocol_pairs
from maskrenderer_jax.evaluation import metrics
from maskrenderer_jax.face3d import recon_net, render
from maskrenderer_jax.face3d.branch import branch_inputs
from maskrenderer_jax.inference.reenact import relative_keypoints
from maskrenderer_jax.models import maskrenderer as mr
from maskrenderer_jax.train import sharding

PROTOCOLS = ("self", "cross")
BASELINES = ("copy_source", "copy_driving")
# The columns of the paper's tables (plus the second seed's), in order.
TABLE_COLUMNS = {
    "self": ("akd", "aid", "l1", "epd", "ssim", "psnr", "masked_ssim", "masked_psnr", "lpips",
             "csim", "nme", "prmse", "macs"),
    "cross": ("isim", "ksim", "psim", "fid", "macs"),
}  # fmt: skip
MAX_NAMED = 100  # skipped frames named per metric in the result (all are counted)
HIGHER_IS_BETTER = {"ssim", "psnr", "masked_ssim", "masked_psnr", "csim", "isim", "ksim", "psim"}

FaceTool = Callable[[np.ndarray], np.ndarray]  # [B, H, W, 3] in [0, 1] -> [B, ...], NaN = none


@dataclasses.dataclass(frozen=True)
class Backends:
    """The networks the metrics run on; None leaves their metrics out.

    landmarks: images -> [B, 68, 2] pixels (x, y; integer = pixel centre), NaN rows where no
      face was found. identity: images -> [B, D] embeddings, NaN rows likewise.
    lpips: LPIPS variables (nets.lpips) for `lpips_net`; inception: FID InceptionV3
    variables (nets.inception); recon: Deep3DFace ReconNet variables (EPD, PSIM, PRMSE);
    pose: instead of recon, (landmarks [B, 68, 2], image size) -> [B, 257] coefficients
    fitted to the landmark backend's points (evaluation.head_pose).
    names: what each backend is, written beside every result (e.g. which weights).
    """

    landmarks: FaceTool | None = None
    identity: FaceTool | None = None
    lpips: dict | None = None
    lpips_net: str = "alex"
    inception: dict | None = None
    recon: dict | None = None
    pose: Callable[[np.ndarray, int], np.ndarray] | None = None
    names: dict = dataclasses.field(default_factory=dict)


def _local_rows(x: jax.Array) -> np.ndarray:
    """This process's rows of a batch-sharded global array, in order, as numpy."""
    if x.is_fully_addressable:
        return np.asarray(x)
    shards = {s.index[0].start or 0: s.data for s in x.addressable_shards}
    return np.concatenate([np.asarray(shards[k]) for k in sorted(shards)])


def model_macs_per_frame(config: ml_collections.ConfigDict, face_model=None) -> float:
    """MACs of generating one frame, from XLA's cost analysis of the compiled per-frame
    program: the driver's keypoints, the 3D branch (when the model has it), dense motion and
    the generator, with the source's keypoints computed once (as inference does)."""
    model = mr.build_model(config.model)
    size = config.model.image_size
    image = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    coeffs = jax.ShapeDtypeStruct((1, 257), jnp.float32)
    variables = jax.eval_shape(lambda: mr.init_variables(config.model, jax.random.key(0)))
    kp = jax.eval_shape(lambda v, x: model.apply(v, x, train=False, method=mr.MaskRenderer.detect),
                        variables, image)  # fmt: skip

    def frame(variables, source, kp_source, driving, source_coeffs, driving_coeffs):
        kp_driving = model.apply(variables, driving, train=False, method=mr.MaskRenderer.detect)
        extra = {}
        if model.uses_3d:
            extra = branch_inputs(face_model, source_coeffs, driving_coeffs, size)
        out = model.apply(variables, source, kp_source, kp_driving, **extra, train=False,
                          method=mr.MaskRenderer.animate)  # fmt: skip
        return out["prediction"]

    return metrics.macs_per_frame(frame, variables, image, kp, image, coeffs, coeffs, frames=1)


class Evaluator:
    """One protocol on one config's data and model, compiled once; `run(variables)` per
    checkpoint (training calls it every `eval.every_steps`)."""

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        protocol: str,
        backends: Backends,
        *,
        mesh: jax.sharding.Mesh,
        face_model=None,
        baseline: str | None = None,
        limit: int = 0,
    ):
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
        if baseline not in (None, *BASELINES):
            raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")
        self.config, self.protocol, self.backends = config, protocol, backends
        self.mesh, self.baseline, self.limit = mesh, baseline, limit
        self.model = mr.build_model(config.model)
        self.uses_3d = self.model.uses_3d and baseline is None
        self.face_model = face_model
        # The set's coefficients are the exact ground truth only for the rendered set.
        self.has_truth = config.data.dataset == "synthetic_heads" and face_model is not None
        if self.uses_3d and face_model is None:
            raise ValueError("this model uses the 3D branch: pass face_model (its 3DMM)")
        split = sources.open_split(config.data, config.data.eval_split)
        if self.uses_3d and not split.has_coeffs:
            raise ValueError(
                f"the model's 3D branch needs 3DMM coefficients, and data set {split.name!r} "
                "has none: build it with `python -m data_pipeline.build ... --recon_variables "
                "DIR` (Deep3DFace's regressor), as for training"
            )
        self.clip_names = split.index.clips
        self.num_pairs = len(protocol_pairs(config, protocol, limit=limit, index=split.index))
        batch = sharding.batch_sharding(mesh)
        self._device = jax.jit(
            self._device_fn, out_shardings=batch, in_shardings=(None, None, batch)
        )

    # ------------------------------------------------------------------ on the devices

    def _predict(self, variables, batch):
        if self.baseline == "copy_source":
            return batch["source"]
        if self.baseline == "copy_driving":
            return batch["driving"]
        detect = lambda x: self.model.apply(
            variables, x, train=False, method=mr.MaskRenderer.detect
        )
        kp_source, kp_driving = detect(batch["source"]), detect(batch["driving"])
        cross = self.protocol == "cross"
        if cross:  # FOMM's relative animation from the clip's first frame (scale 1)
            kp_driving = relative_keypoints(kp_source, kp_driving, detect(batch["driving_initial"]))
        extra = {}
        if self.uses_3d:
            extra = branch_inputs(
                self.face_model,
                batch["source_coeffs"],
                batch["driving_coeffs"],
                self.config.model.image_size,
                driving_initial_coeffs=batch["driving_initial_coeffs"] if cross else None,
            )
        out = self.model.apply(
            variables, batch["source"], kp_source, kp_driving, **extra, train=False,
            method=mr.MaskRenderer.animate,
        )  # fmt: skip
        return out["prediction"].astype(jnp.float32)

    def _device_fn(self, variables, frozen, batch):
        prediction = self._predict(variables, batch)
        driving = batch["driving"]
        out = {"prediction": prediction}
        if self.protocol == "self":
            out.update(
                l1=metrics.l1(prediction, driving),
                psnr=metrics.psnr(prediction, driving),
                ssim=metrics.ssim(prediction, driving),
            )
            if frozen.get("lpips") is not None:
                out["lpips"] = metrics.lpips(
                    prediction, driving, self.backends.lpips_net, frozen["lpips"]
                )
        if self.has_truth:
            size = driving.shape[1]
            truth = render.render(self.face_model, batch["driving_coeffs"], size)
            # Evaluation pixels: integer coordinates are pixel centres (the rasterizer's
            # centres sit at +0.5).
            out["truth_landmarks"] = truth["landmarks"] - 0.5
            if self.protocol == "self":
                mask = truth["mask"]
                out["masked_psnr"] = metrics.masked_psnr(prediction, driving, mask)
                out["masked_ssim"] = metrics.masked_ssim(prediction, driving, mask)
        if frozen.get("inception") is not None and self.protocol == "cross":
            from maskrenderer_jax.nets import inception

            out["pool3_prediction"] = inception.features(frozen["inception"], prediction)
            out["pool3_source"] = inception.features(frozen["inception"], batch["source"])
        if frozen.get("recon") is not None:
            net = recon_net.ReconNet()
            images = jnp.concatenate([prediction, driving])
            coeffs = net.apply(frozen["recon"], recon_net.preprocess_fomm_crop(images), train=False)
            out["coeffs_prediction"], out["coeffs_driving"] = jnp.split(coeffs, 2)
        return out

    # ---------------------------------------------------------------------- on the host

    def _host_values(self, batch: dict, device: dict) -> dict[str, np.ndarray]:
        """Per-row metric values of this process's rows."""
        values = {k: v for k, v in device.items() if v.ndim == 1}
        prediction, driving, source = device["prediction"], batch["driving"], batch["source"]
        truth = device.get("truth_landmarks")
        coeffs = None
        if "coeffs_prediction" in device:
            coeffs = device["coeffs_prediction"], device["coeffs_driving"]
        if self.backends.landmarks is not None:
            points_pred = self.backends.landmarks(prediction)
            points_driving = self.backends.landmarks(driving)
            if self.protocol == "self":
                values["akd"] = np.asarray(metrics.akd(points_pred, points_driving))
                values["nme"] = np.asarray(metrics.nme(points_pred, points_driving))
            else:
                values["ksim"] = np.asarray(metrics.ksim(points_pred, points_driving))
            if truth is not None:
                values["truth_akd"] = np.asarray(metrics.akd(points_driving, truth))
                values["truth_nme"] = np.asarray(metrics.nme(points_driving, truth))
            if coeffs is None and self.backends.pose is not None:
                size = driving.shape[1]
                coeffs = (
                    self.backends.pose(points_pred, size),
                    self.backends.pose(points_driving, size),
                )
        if self.backends.identity is not None:
            emb_pred = self.backends.identity(prediction)
            emb_source = self.backends.identity(source)
            if self.protocol == "self":
                emb_driving = self.backends.identity(driving)
                values["aid"] = np.asarray(metrics.aid(emb_pred, emb_driving))
                values["csim"] = np.asarray(metrics.csim(emb_source, emb_pred))
            else:
                values["isim"] = np.asarray(metrics.isim(emb_source, emb_pred))
        if coeffs is not None:
            pred, drv = (np.asarray(c) for c in coeffs)
            if self.protocol == "self":
                values["epd"] = np.asarray(metrics.epd(pred, drv))
                values["prmse"] = np.asarray(metrics.prmse(pred, drv))
            else:
                values["psim"] = np.asarray(metrics.psim(pred, drv))
            if self.has_truth:
                values["truth_prmse"] = np.asarray(metrics.prmse(drv, batch["driving_coeffs"]))
        for key in ("pool3_prediction", "pool3_source"):
            if key in device:
                values[key] = device[key]
        return values

    def batches(self) -> Iterator[dict]:
        return make_eval_iter(self.config, self.protocol, mesh=self.mesh, limit=self.limit)

    def run(self, variables: dict | None, *, log_every_seconds: float = 10.0) -> dict:
        """Evaluates `variables` (the generator side's {'params', 'batch_stats'}; None for a
        baseline) over the protocol; returns `result` (see `summarise`)."""
        if variables is None and self.baseline is None:
            raise ValueError("variables are needed unless a baseline is evaluated")
        frozen = {"lpips": self.backends.lpips, "inception": self.backends.inception,
                  "recon": self.backends.recon}  # fmt: skip
        frozen = jax.device_put(frozen, sharding.replicated(self.mesh))
        variables = jax.device_put(variables, sharding.replicated(self.mesh))
        keys = ["source", "driving", "driving_initial"]
        if self.uses_3d or self.has_truth:
            keys += ["source_coeffs", "driving_coeffs", "driving_initial_coeffs"]
        rows: dict[str, list] = {}
        start, last_log, done = time.perf_counter(), time.perf_counter(), 0
        for batch in self.batches():
            inputs = sharding.global_batch({k: batch[k] for k in keys if k in batch}, self.mesh)
            device = {k: _local_rows(v) for k, v in self._device(variables, frozen, inputs).items()}
            valid = np.asarray(batch["valid"])
            for key in ("driving_clip", "driving_frame"):  # names the frames skipped
                rows.setdefault(key, []).append(np.asarray(batch[key], np.float32)[valid])
            for key, value in self._host_values(batch, device).items():
                rows.setdefault(key, []).append(np.asarray(value, np.float32)[valid])
            done += int(valid.sum()) * jax.process_count()
            now = time.perf_counter()
            if now - last_log > log_every_seconds or done >= self.num_pairs:
                rate = done / (now - start)
                eta = (self.num_pairs - done) / max(rate, 1e-9)
                logging.info("evaluation %s: %d/%d frames, %.1f frames/s, ETA %.0f s",
                             self.protocol, done, self.num_pairs, rate, eta)  # fmt: skip
                last_log = now
        local = {k: np.concatenate(v) for k, v in rows.items()}
        if jax.process_count() > 1:
            local = multihost_utils.process_allgather(local, tiled=True)
        return self.summarise(local, seconds=time.perf_counter() - start)

    def summarise(self, values: dict[str, np.ndarray], *, seconds: float) -> dict:
        """{'protocol', 'frames', 'baseline', 'metrics': {name: value}, 'skipped': {name:
        frames without a value}, 'skipped_frames': {name: ['<clip>:<frame>', ...] (the first
        100)}, 'ground_truth': {backend floors}, 'backends', 'seconds', 'frames_per_second'}."""
        out = {"metrics": {}, "skipped": {}, "skipped_frames": {}, "ground_truth": {}}
        frame_names = [
            f"{self.clip_names[int(c)]}:{int(t)}"
            for c, t in zip(values["driving_clip"], values["driving_frame"], strict=True)
        ]
        truths = {f"truth_{m}": f"{m}_driving_vs_truth" for m in ("akd", "nme", "prmse")}
        for key in (*TABLE_COLUMNS[self.protocol], *truths):
            if key not in values:
                continue
            name = truths.get(key, key)
            value, skipped = metrics.aggregate(key.removeprefix("truth_"), values[key])
            (out["ground_truth"] if key in truths else out["metrics"])[name] = value
            if skipped:  # no face found in the output or the driving frame
                out["skipped"][name] = skipped
                missing = np.flatnonzero(np.isnan(values[key]))
                out["skipped_frames"][name] = [frame_names[i] for i in missing[:MAX_NAMED]]
        if "pool3_prediction" in values:
            out["metrics"]["fid"] = metrics.frechet_distance(
                values["pool3_prediction"], values["pool3_source"]
            )
        frames = len(frame_names)
        return {
            "protocol": self.protocol,
            "baseline": self.baseline,
            "frames": frames,
            **out,
            "backends": dict(self.backends.names),
            "seconds": round(seconds, 2),
            "frames_per_second": round(frames / max(seconds, 1e-9), 2),
        }
