"""make demo  (= python train.py --config=configs/demo.py --workdir=workdirs/demo, then the
reenactment outputs)

The full MaskRenderer graph (3DMM branch from the data set's coefficients, CBAM, multi-scale
occlusion, warping loss, the triplet loss switched on half-way) at configs/tiny.py's sizes,
trained on the embedded synthetic_heads set for a few hundred steps: a CPU run of about seven
minutes that exercises every part of training. The frozen VGG19 / VGGFace2 have random weights
here (nothing is downloaded), so the losses measure little: the demo shows the machinery, not
a trained model.
"""

import ml_collections

from configs import tiny


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    config = tiny.get_config()
    config.data.batch_size = 4  # ~1.2 s a step before the triplet phase, ~2.2 s after (2 cores)
    config.train.update(num_steps=240, log_every=20, image_every=60)
    config.loss.triplet_start_step = 140
    config.checkpoint.update(every_steps=60, keep=2)
    return config
