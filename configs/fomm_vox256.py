"""python train.py --config=configs/fomm_vox256.py --workdir=workdirs/fomm_vox256

FOMM on VoxCeleb at 256x256 (first-order-model config/vox-256.yaml): the baseline that
MaskRenderer extends, and the layout the FOMM converter reads and writes.
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    config = ml_collections.ConfigDict()
    config.model = common.fomm_model()
    config.lock()
    return config
