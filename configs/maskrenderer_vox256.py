"""python train.py --config=configs/maskrenderer_vox256.py --workdir=workdirs/maskrenderer

MaskRenderer on VoxCeleb at 256x256 with the paper's values: K = 10 facial features, CBAM on
the hourglass skips, the 3D motion field and rendered face as dense-motion inputs (K+2 masks),
multi-scale occlusion (one mask per generator level: 256, 128, 64, 32) over a three-level
skip-connected generator (TPSMM).
"""

import ml_collections

from configs import common
from data_pipeline.config import data_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    config = ml_collections.ConfigDict()
    model = common.fomm_model(num_kp=10)
    model.generator.num_down_blocks = 3
    config.model = common.maskrenderer_model(model)
    # The paper: batch 8, 150 repeats per epoch; 3DMM coefficients stored in the data set.
    config.data = data_config(dataset="voxceleb", image_size=256, batch_size=8, num_repeats=150)
    # The paper: 100 epochs, Adam betas (0.5, 0.99), alpha = beta = 10 (eq. (11)).
    common.training_sections(config, maskrenderer=True, betas=(0.5, 0.99))
    config.lock()
    return config
