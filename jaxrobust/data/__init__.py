"""Datasets: tfds builders (offline `digits`), random-access sources, grain loaders.

from jaxrobust.data import make_loader, load_split
loader = make_loader("digits", "train", batch_size=128, seed=0)
x_test, y_test = load_split("digits", "test")
"""

from jaxrobust.data.datasets import (
    DATA_DIR_ENV,
    DATASETS,
    DatasetInfo,
    data_source,
    default_data_dir,
    get_info,
    is_prepared,
    prepare,
    resolve_data_dir,
)
from jaxrobust.data.digits import DigitsBuilder
from jaxrobust.data.loader import (
    LoaderState,
    RandomCropFlip,
    ShardSampler,
    ToArrays,
    augmentation,
    load_split,
    loader_state,
    make_loader,
    random_crop_flip,
    restore_loader_state,
    shard_range,
    to_arrays,
)

__all__ = [
    "DATASETS",
    "DATA_DIR_ENV",
    "DatasetInfo",
    "DigitsBuilder",
    "LoaderState",
    "RandomCropFlip",
    "ShardSampler",
    "ToArrays",
    "augmentation",
    "data_source",
    "default_data_dir",
    "get_info",
    "is_prepared",
    "load_split",
    "loader_state",
    "make_loader",
    "prepare",
    "random_crop_flip",
    "resolve_data_dir",
    "restore_loader_state",
    "shard_range",
    "to_arrays",
]
