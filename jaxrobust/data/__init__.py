"""Datasets: tfds builders (offline `digits`, generated `shapes`), random-access sources,
grain loaders.

from jaxrobust.data import make_loader, load_split
loader = make_loader("digits", "train", batch_size=128, seed=0)
x_test, y_test = load_split("digits", "test")
x, y = load_split("shapes", "test_shuffled", dataset_kwargs={"planted": True})
"""

from jaxrobust.data.datasets import (
    DATA_DIR_ENV,
    DATASETS,
    DatasetInfo,
    DatasetKwargs,
    check_kwargs,
    data_source,
    default_data_dir,
    get_info,
    is_prepared,
    prepare,
    resolve_data_dir,
)
from jaxrobust.data.derived import write_class_subset
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
from jaxrobust.data.shapes import ShapesBuilder, ShapesParams, shapes_arrays, shapes_params

__all__ = [
    "DATASETS",
    "DATA_DIR_ENV",
    "DatasetInfo",
    "DatasetKwargs",
    "DigitsBuilder",
    "LoaderState",
    "RandomCropFlip",
    "ShapesBuilder",
    "ShapesParams",
    "ShardSampler",
    "ToArrays",
    "augmentation",
    "check_kwargs",
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
    "shapes_arrays",
    "shapes_params",
    "shard_range",
    "to_arrays",
    "write_class_subset",
]
