"""python train.py --config=configs/ablation.py:row=3dmm_cbam,steps=300 --workdir=...

The rows of the paper's Table 3 (its ablation) at configs/demo.py's sizes, data and schedule,
for `python -m benchmarks.learning`. Each row switches on the components its name lists on
top of FOMM's networks; everything else (data, batch, learning-rate schedule, perceptual
network, the generator's objective: eq. (11)'s beta, the LSGAN term of eq. (9), feature
matching and the demo's pixel L1) is the same in every row, so two rows differ only by what
their names say.

- 3dmm: the 3D motion as an extra dense motion with the rendered face as input (eq. (4)).
- cbam: CBAM skips in the keypoint detector's and the dense motion network's hourglasses.
- masks: an occlusion mask per generator level and skip-connected decoding (eq. (5)).
- lw: the warping loss L_W (weight 10).
- lt: the identity triplet loss L_T (eq. (6), alpha 10) from a tenth of the steps on, with
  VGGFace2's random weights unless `pretrained.vggface2` is given.
"""

import ml_collections

from configs import common, demo

# Row name -> the components it switches on (the paper's Table 3 rows, in its order).
ROWS = {
    "fomm": (),
    "3dmm": ("3dmm",),
    "3dmm_cbam": ("3dmm", "cbam"),
    "3dmm_masks_lw": ("3dmm", "masks", "lw"),
    "3dmm_lt": ("3dmm", "lt"),
    "maskrenderer": ("3dmm", "cbam", "masks", "lw", "lt"),
}
LABELS = {
    "fomm": "FOMM",
    "3dmm": "+ 3DMM",
    "3dmm_cbam": "+ 3DMM + CBAM",
    "3dmm_masks_lw": "+ 3DMM + multi-scale masks + L_W",
    "3dmm_lt": "+ 3DMM + L_T",
    "maskrenderer": "MaskRenderer (all)",
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = common.parse_arg(arg, row="maskrenderer", steps=demo.NUM_STEPS, seed=0)
    if args.row not in ROWS:
        raise ValueError(f"unknown ablation row {args.row!r}; known: {list(ROWS)}")
    parts = ROWS[args.row]
    config = demo.get_config()  # MaskRenderer with every component, L_T off
    model = config.model
    model.dense_motion.num_extra_motions = 1 if "3dmm" in parts else 0
    model.kp_detector.attention = model.dense_motion.attention = "cbam" in parts
    model.generator.skip_connections = "masks" in parts
    model.dense_motion.num_occlusion_masks = (
        model.generator.num_down_blocks + 1 if "masks" in parts else 1
    )
    config.loss.warping = 10.0 if "lw" in parts else 0.0
    if "lt" in parts:
        config.loss.alpha = 10.0
        config.loss.triplet_start_step = max(args.steps // 10, 1)
    demo.set_schedule(config, args.steps)
    config.train.seed = config.data.seed = args.seed
    return config
