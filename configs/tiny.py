"""python train.py --config=configs/tiny.py --workdir=/tmp/tiny

64x64, few channels: the full MaskRenderer graph at a size that tests and CPU runs afford.
`--config=configs/tiny.py:fomm` gives the same sizes as plain FOMM.
"""

import ml_collections

from configs import common
from data_pipeline.config import data_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = common.parse_arg(arg, fomm=False)
    model = common.fomm_model(num_kp=4, image_size=64)
    model.kp_detector.update(block_expansion=8, max_features=32, num_blocks=3)
    model.dense_motion.update(block_expansion=8, max_features=32, num_blocks=3)
    model.generator.update(
        block_expansion=8, max_features=32, num_down_blocks=2, num_bottleneck_blocks=2
    )
    model.discriminator.update(block_expansion=8, max_features=32, num_blocks=3)
    config = ml_collections.ConfigDict()
    config.model = model if args.fomm else common.maskrenderer_model(model)
    config.data = data_config(image_size=64, batch_size=8)  # the embedded synthetic_heads set
    common.training_sections(config, maskrenderer=not args.fomm, betas=(0.5, 0.99))
    # VGG19's relu5_1 needs >= 16 px: FOMM's 0.125 scale of a 64 px frame would be 8 px.
    config.loss.pyramid_scales = (1.0, 0.5, 0.25)
    config.loss.triplet_start_step = 2  # both compiled variants run within a few steps
    config.loss.triplet.update(crop=False, input_size=64)  # VGGFace2 at 64 px (random weights)
    # FOMM's VGG19 (random here): the torch-mirror parity tests and benchmarks compare it.
    config.pretrained.perceptual = "vgg19"
    config.train.update(num_steps=4, log_every=1, image_every=2)
    config.checkpoint.update(every_steps=2, keep=2)
    config.lock()
    return config
