"""Derived datasets: arrays computed from another dataset (e.g. Ilyas et al. 2019's
D_rand / D_det / D_R / D_NR from `jaxrobust.features`), stored as tfds datasets.

A derived dataset is a folder; its name is `"derived:<folder>"` (an absolute path, or one
relative to the working directory), which every dataset argument accepts (`load_split`,
`make_loader`, the training config's `dataset`): the name carries the location, so a run
trained on it (whose config.json stores the name) is restored from any process without a
registration step. The folder holds

    dataset.json   what `DatasetInfo` needs (image shape, classes, the normalisation
                   statistics of the dataset it derives from, ...), written last: a
                   folder without it is not (yet) a dataset;
    tfds/          the tfds dataset (array_record files, same record format as `digits`:
                   {"image": float32 (H, W, C) in [0, 1], "label": ClassLabel}), read
                   with `tfds.builder_from_directory` (no builder code needed to read);

and whatever its producer adds (provenance, chunks of a resumable build).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, cast

import numpy as np

from jaxrobust.errors import DatasetError

PREFIX = "derived:"
"""Dataset names that start with this refer to a derived-dataset folder."""

INFO_FILE = "dataset.json"
TFDS_DIR = "tfds"
TFDS_NAME = "jaxrobust_derived"
VERSION = "1.0.0"


def is_derived(name: Any) -> bool:
    """Whether dataset name `name` refers to a derived-dataset folder (`derived:<folder>`)."""
    return isinstance(name, str) and name.startswith(PREFIX)


def derived_name(folder: str | os.PathLike[str]) -> str:
    """The dataset name of the derived dataset in `folder`: `"derived:<absolute path>"`."""
    return PREFIX + os.fspath(Path(folder).expanduser().absolute())


def folder_of(name: str) -> Path:
    """The folder a `derived:` name refers to."""
    return Path(name[len(PREFIX) :]).expanduser().absolute()


def read_metadata(name: str) -> dict[str, Any]:
    """The folder's dataset.json, or `DatasetError` naming what is missing."""
    folder = folder_of(name)
    path = folder / INFO_FILE
    if not path.is_file():
        raise DatasetError(
            f"dataset {name!r}: {folder} holds no finished derived dataset (no {INFO_FILE}); "
            "build it first (e.g. jaxrobust.features.build_dataset), or finish an "
            "interrupted build by running it again"
        )
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"dataset {name!r}: cannot read {path}: {e}") from None


def derived_info(name: str) -> Any:
    """The `DatasetInfo` of derived dataset `name` (from its dataset.json)."""
    from jaxrobust.data.datasets import DatasetInfo

    meta = read_metadata(name)
    try:
        return DatasetInfo(
            name=name,
            tfds_name=name,
            image_shape=cast(tuple[int, int, int], tuple(int(v) for v in meta["image_shape"])),
            num_classes=int(meta["num_classes"]),
            mean=tuple(float(v) for v in meta["mean"]),
            std=tuple(float(v) for v in meta["std"]),
            augment=bool(meta.get("augment", False)),
            offline=True,
            flip=bool(meta.get("flip", False)),
            splits=tuple(meta["splits"]),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise DatasetError(f"dataset {name!r}: malformed {INFO_FILE}: {e!r}") from None


def tfds_dir(folder: str | os.PathLike[str]) -> Path:
    """Where the tfds dataset of a derived-dataset folder lives."""
    return Path(folder) / TFDS_DIR / TFDS_NAME / VERSION


def derived_builder(name: str) -> Any:
    """A read-only tfds builder over the derived dataset `name`."""
    import tensorflow_datasets as tfds

    path = tfds_dir(folder_of(name))
    try:
        return tfds.builder_from_directory(os.fspath(path))
    except Exception as e:
        raise DatasetError(f"dataset {name!r}: cannot open the tfds dataset in {path}: {e}") from e


def _builder_class() -> type:
    import tensorflow_datasets as tfds

    class DerivedBuilder(
        tfds.core.GeneratorBasedBuilder,
        skip_registration=True,  # type: ignore[call-arg]  # tfds is untyped (Any base)
    ):
        """Writes in-memory split arrays as a tfds dataset (array_record)."""

        name = TFDS_NAME
        VERSION = tfds.core.Version(VERSION)
        RELEASE_NOTES: ClassVar[dict[str, str]] = {str(VERSION): "A jaxrobust derived dataset."}
        code_path = None  # as DigitsBuilder: no checksums file to look for

        def __init__(self, *, splits, num_classes, description, **kwargs):
            self._splits = splits
            self._num_classes = num_classes
            self._description = description
            super().__init__(**kwargs)

        def _info(self):
            shape = next(iter(self._splits.values()))[0].shape[1:]
            return tfds.core.DatasetInfo(
                builder=self,
                description=self._description,
                features=tfds.features.FeaturesDict(
                    {
                        "image": tfds.features.Tensor(shape=shape, dtype=np.float32),
                        "label": tfds.features.ClassLabel(num_classes=self._num_classes),
                    }
                ),
                supervised_keys=("image", "label"),
                disable_shuffling=True,  # record i is row i of the arrays
            )

        def _split_generators(self, dl_manager):
            del dl_manager
            return {split: self._generate_examples(*xy) for split, xy in self._splits.items()}

        def _generate_examples(self, x, y) -> Iterator[tuple[int, dict[str, Any]]]:
            for i, (image, label) in enumerate(zip(x, y, strict=True)):
                yield i, {"image": image, "label": int(label)}

    return DerivedBuilder


def write_derived(
    folder: str | os.PathLike[str],
    splits: Mapping[str, tuple[np.ndarray, np.ndarray]],
    *,
    num_classes: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    augment: bool = False,
    flip: bool = False,
    description: str = "",
    metadata: Mapping[str, Any] | None = None,
) -> str:
    """Store split arrays as the derived dataset in `folder`; returns its name.

    Args:
      folder: the dataset's folder (created if missing; a previous tfds/ in it is replaced).
      splits: {split: (x float32 (N, H, W, C) in [0, 1], y int (N,))}, e.g. "train" (the
        constructed examples) and "test" (the original test split).
      num_classes: labels are in [0, num_classes).
      mean, std: per-channel normalisation statistics for models trained on it (use the
        source dataset's: models normalise inside, and are tested on the source's test set).
      augment, flip: the `DatasetInfo` defaults for augmentation.
      description: tfds description.
      metadata: more JSON entries for dataset.json (e.g. provenance).

    Returns:
      `"derived:<absolute folder>"`, the name to pass as a dataset.
    """
    import shutil

    from jaxrobust.data.datasets import _quiet

    folder = Path(folder).expanduser().absolute()
    folder.mkdir(parents=True, exist_ok=True)
    info_path = folder / INFO_FILE
    if info_path.exists():
        info_path.unlink()  # the folder is not a finished dataset while it is rewritten
    arrays = {}
    for split, (x, y) in splits.items():
        x = np.asarray(x, np.float32)
        y = np.asarray(y, np.int64)
        if x.ndim != 4 or y.shape != (x.shape[0],):
            raise DatasetError(
                f"split {split!r}: need x (N, H, W, C) and y (N,), got {x.shape} and {y.shape}"
            )
        arrays[split] = (x, y)
    shutil.rmtree(folder / TFDS_DIR, ignore_errors=True)
    builder = _builder_class()(
        splits=arrays,
        num_classes=num_classes,
        description=description or "A jaxrobust derived dataset.",
        data_dir=os.fspath(folder / TFDS_DIR),
    )
    with _quiet():
        builder.download_and_prepare(file_format="array_record")
    x0 = next(iter(arrays.values()))[0]
    meta = {
        **(dict(metadata) if metadata else {}),
        "image_shape": list(x0.shape[1:]),
        "num_classes": int(num_classes),
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "augment": bool(augment),
        "flip": bool(flip),
        "splits": list(arrays),
        "num_examples": {split: int(xy[0].shape[0]) for split, xy in arrays.items()},
    }
    tmp = info_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True))
    os.replace(tmp, info_path)
    return derived_name(folder)


def write_class_subset(
    folder: str | os.PathLike[str],
    dataset: str,
    classes: tuple[int, ...] | list[int],
    *,
    splits: tuple[str, ...] = ("train", "test"),
    data_dir: str | os.PathLike[str] | None = None,
    dataset_kwargs: Mapping[str, Any] | None = None,
) -> str:
    """The records of `dataset` whose label is in `classes`, relabelled 0..k-1 in the order
    given, as a derived dataset in `folder`; returns its name. E.g. CIFAR-10's dog vs cat
    (the 2-class setting of Ilyas et al. 2019): `write_class_subset(folder, "cifar10",
    (5, 3))` makes dog class 0 and cat class 1.

    A folder that already holds the same subset (same source, parameters, classes and
    splits, read from its dataset.json) is reused as it is.

    Args:
      folder: the dataset's folder.
      dataset: the source dataset's name (any name `load_split` takes).
      classes: k >= 2 distinct class indices of the source, in [0, num_classes).
      splits: the source's splits to keep.
      data_dir: where the source's prepared data lives.
      dataset_kwargs: the source's parameters.

    Raises:
      DatasetError: bad `classes`, or a split with no record of some kept class.
    """
    from jaxrobust.data.datasets import get_info
    from jaxrobust.data.loader import load_split

    info = get_info(dataset)
    ok = isinstance(classes, list | tuple) and all(
        isinstance(c, int | np.integer) and not isinstance(c, bool) for c in classes
    )
    kept = [int(c) for c in classes] if ok else []
    if (
        len(kept) < 2
        or len(set(kept)) != len(kept)
        or not all(0 <= c < info.num_classes for c in kept)
    ):
        raise DatasetError(
            f"classes must be at least 2 distinct class indices of {dataset!r} in "
            f"[0, {info.num_classes}), got {classes!r}"
        )
    source = {
        "dataset": dataset,
        "dataset_kwargs": dict(dataset_kwargs or {}),
        "classes": kept,
        "splits": list(splits),
    }
    folder = Path(folder).expanduser().absolute()
    if (folder / INFO_FILE).is_file():
        try:
            if json.loads((folder / INFO_FILE).read_text()).get("class_subset") == source:
                return derived_name(folder)
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            pass  # unreadable: rebuilt below
    relabel = np.full(info.num_classes, -1, np.int64)
    relabel[kept] = np.arange(len(kept))
    arrays = {}
    for split in splits:
        x, y = load_split(dataset, split, data_dir=data_dir, dataset_kwargs=dataset_kwargs)
        keep = relabel[y] >= 0
        missing = [c for c in kept if not np.any(y == c)]
        if missing:
            raise DatasetError(f"{dataset}/{split} holds no record of the classes {missing}")
        arrays[split] = (x[keep], relabel[y[keep]])
    return write_derived(
        folder,
        arrays,
        num_classes=len(kept),
        mean=tuple(info.mean),
        std=tuple(info.std),
        augment=info.augment,
        flip=info.flip,
        description=f"Classes {kept} of {dataset}, relabelled 0..{len(kept) - 1} in that order.",
        metadata={"class_subset": source},
    )
