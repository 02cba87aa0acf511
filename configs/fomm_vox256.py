"""python train.py --config=configs/fomm_vox256.py --workdir=workdirs/fomm_vox256

FOMM on VoxCeleb at 256x256 (first-order-model config/vox-256.yaml): the baseline that
MaskRenderer extends, and the layout the FOMM converter reads and writes.
"""

import ml_collections

from configs import common
from data_pipeline.config import data_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    config = ml_collections.ConfigDict()
    config.model = common.fomm_model()
    # FOMM vox-256: batch 40, 75 repeats per epoch (a TFDS set from data_pipeline.build).
    config.data = data_config(dataset="voxceleb", image_size=256, batch_size=40, num_repeats=75)
    # FOMM: 100 epochs, milestones 60 and 90, Adam betas (0.5, 0.999).
    common.training_sections(config, maskrenderer=False, betas=(0.5, 0.999))
    config.lock()
    return config
