"""The UCI handwritten digits as a tensorflow-datasets builder that needs no network.

The 1797 8×8 images ship inside scikit-learn (`sklearn.datasets.load_digits`), so this
dataset prepares offline in well under a second and is what tests, smoke configs and
demos use. Images are stored as float32 (8, 8, 1) already scaled to [0, 1] (value / 16);
labels are `ClassLabel(10)`.

The train/test split is fixed: `train_test_split(test_size=0.2, random_state=0,
stratify=y)` gives 1437 train and 360 test examples with every class in both splits.
Records are written in that split's order (`disable_shuffling=True`), so record `i` of
a split is row `i` of the scikit-learn split.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import registered

TFDS_NAME = "digits"
"""Name under which the builder is registered with tfds (`tfds.builder("digits")`)."""

NUM_TRAIN = 1437
NUM_TEST = 360

# tfds 4.9.10 has no dataset called "digits"; skip registration only when the name is
# already taken (e.g. this module re-imported under another name), which would
# otherwise raise at class creation.
_SKIP_REGISTRATION = TFDS_NAME in registered._DATASET_REGISTRY


def digits_arrays() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The fixed split as arrays, straight from scikit-learn.

    Returns:
      `{"train": (x, y), "test": (x, y)}` with `x` float32 (N, 8, 8, 1) in [0, 1] and
      `y` int64 (N,) in [0, 10).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    # Pixel values are counts 0..16 of set bits in 4x4 blocks: /16 maps them onto [0, 1].
    x = (d.images / 16.0).astype(np.float32)[..., None]
    y = d.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    return {"train": (x_tr, y_tr), "test": (x_te, y_te)}


class DigitsBuilder(
    tfds.core.GeneratorBasedBuilder,
    skip_registration=_SKIP_REGISTRATION,  # type: ignore[call-arg]  # tfds is untyped (Any base)
):
    """tfds builder for the UCI digits (offline; prepare with `file_format="array_record"`)."""

    name = TFDS_NAME
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {
        "1.0.0": "Initial release: fixed stratified 1437/360 split."
    }
    # tfds looks for a download-checksums file next to the builder's code, and doing so
    # for a builder inside a package imports the optional `importlib_resources` (not
    # installed here: it is what makes `mnist` fail offline). Nothing is downloaded.
    code_path = None

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "UCI ML hand-written digits (scikit-learn copy): 8x8 grey images in [0, 1] "
                "(value/16), 10 classes, fixed stratified split of 1437 train / 360 test."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.float32),
                    "label": tfds.features.ClassLabel(num_classes=10),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://archive.ics.uci.edu/dataset/80",
            # Keep the scikit-learn split order: record i is row i of the split.
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: Any) -> dict[str, Iterator[tuple[int, dict]]]:
        del dl_manager  # Nothing to download: the data ships with scikit-learn.
        arrays = digits_arrays()
        return {split: self._generate_examples(*xy) for split, xy in arrays.items()}

    def _generate_examples(
        self, x: np.ndarray, y: np.ndarray
    ) -> Iterator[tuple[int, dict[str, Any]]]:
        for i, (image, label) in enumerate(zip(x, y, strict=True)):
            yield i, {"image": image, "label": int(label)}
