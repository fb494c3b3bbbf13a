"""Dataset registry and random-access sources (tensorflow-datasets, array_record files).

Every dataset is read through tfds' `as_data_source`, a random-access view of
array_record files that needs no TensorFlow. `digits` is embedded (built from
scikit-learn, offline, in well under a second) and `shapes` is generated (offline, in
seconds); the others need a one-time download through tensorflow-datasets on a machine
with network access.

Some datasets take parameters, `dataset_kwargs` (a mapping; `shapes`: seed, planted
feature, sizes, see `jaxrobust.data.shapes`). Each set of parameters is prepared into its
own folder; a dataset without parameters refuses non-empty `dataset_kwargs`.

Prepared data lives under `data_dir`, by default `$JAXROBUST_DATA_DIR` or
`~/.cache/jaxrobust/tensorflow_datasets`.

Preparation is guarded by an exclusive file lock per dataset, so several processes
(pytest-xdist workers, multi-host jobs on a shared file system) can ask for the same
dataset at once: one prepares it, the others wait and then reuse it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import socket
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from jaxrobust.errors import DatasetError

try:  # POSIX only; elsewhere tfds' own temp-dir-then-rename is the only guard.
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

DATA_DIR_ENV = "JAXROBUST_DATA_DIR"
"""Environment variable naming the directory that holds prepared datasets."""

NETWORK_TIMEOUT_S = 3.0
"""Seconds allowed to reach a dataset's download host before declaring the machine offline."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What the library needs to know about a dataset.

    Attributes:
      name: our name for it (the key in `DATASETS`).
      tfds_name: the tensorflow-datasets builder name.
      image_shape: (H, W, C) of one image.
      num_classes: number of labels, in [0, num_classes).
      mean, std: per-channel statistics of the train images in [0, 1] units, for a
        normalisation layer inside the model (inputs themselves stay in [0, 1]).
      augment: whether standard training uses augmentation (random crop) by default.
      offline: True when the data ships with the library's dependencies (no download).
      flip: whether a horizontal flip preserves the label (natural images yes, digits no),
        i.e. whether augmentation adds random flips to the random crop.
      splits: the split names.
      source_url: where tensorflow-datasets downloads it from (None when offline).
      kwargs: the `dataset_kwargs` it accepts (empty: none).
    """

    name: str
    tfds_name: str
    image_shape: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: bool
    offline: bool
    flip: bool = False
    splits: tuple[str, ...] = ("train", "test")
    source_url: str | None = None
    kwargs: tuple[str, ...] = ()


DATASETS: dict[str, DatasetInfo] = {
    "digits": DatasetInfo(
        name="digits",
        tfds_name="digits",
        image_shape=(8, 8, 1),
        num_classes=10,
        mean=(0.3054,),
        std=(0.3761,),
        augment=False,
        offline=True,
    ),
    "shapes": DatasetInfo(
        name="shapes",
        tfds_name="shapes",
        image_shape=(32, 32, 3),
        num_classes=10,
        # Of the default train split (seed 0, 20 000 images; the planted pattern moves
        # them by less than 1e-4).
        mean=(0.4971, 0.4967, 0.5043),
        std=(0.2712, 0.2706, 0.2723),
        # Positions are random already, and a shift would move the planted pattern.
        augment=False,
        offline=True,
        # The ell is chiral: its mirror image is no rotation of it.
        flip=False,
        # With planted=True also "test_clean" and "test_shuffled".
        kwargs=(
            "seed",
            "planted",
            "planted_norm",
            "planted_rate",
            "planted_correlation",
            "num_train",
            "num_test",
        ),
    ),
    "mnist": DatasetInfo(
        name="mnist",
        tfds_name="mnist",
        image_shape=(28, 28, 1),
        num_classes=10,
        mean=(0.1307,),
        std=(0.3081,),
        augment=False,
        offline=False,
        source_url="https://storage.googleapis.com/cvdf-datasets/mnist/",
    ),
    "fashion_mnist": DatasetInfo(
        name="fashion_mnist",
        tfds_name="fashion_mnist",
        image_shape=(28, 28, 1),
        num_classes=10,
        mean=(0.2860,),
        std=(0.3530,),
        augment=False,
        offline=False,
        source_url="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    ),
    "cifar10": DatasetInfo(
        name="cifar10",
        tfds_name="cifar10",
        image_shape=(32, 32, 3),
        num_classes=10,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        augment=True,
        offline=False,
        flip=True,
        source_url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    ),
    "svhn_cropped": DatasetInfo(
        name="svhn_cropped",
        tfds_name="svhn_cropped",
        image_shape=(32, 32, 3),
        num_classes=10,
        mean=(0.4377, 0.4438, 0.4728),
        std=(0.1980, 0.2010, 0.1970),
        augment=True,
        offline=False,
        # Digits are not mirror-symmetric: crop only.
        flip=False,
        splits=("train", "test", "extra"),
        source_url="http://ufldl.stanford.edu/housenumbers/",
    ),
}


def get_info(name: str) -> DatasetInfo:
    """The registry entry for `name`; raises `DatasetError` listing the known names.

    A name `"derived:<folder>"` is a derived dataset stored in that folder
    (`jaxrobust.data.derived`), described by the folder's own metadata."""
    from jaxrobust.data import derived

    if derived.is_derived(name):
        return derived.derived_info(name)
    try:
        return DATASETS[name]
    except (KeyError, TypeError):
        known = ", ".join(sorted(DATASETS))
        raise DatasetError(
            f"unknown dataset {name!r}; known datasets: {known} (or derived:<folder>)"
        ) from None


def default_data_dir() -> Path:
    """`$JAXROBUST_DATA_DIR` if set, else `~/.cache/jaxrobust/tensorflow_datasets`."""
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser()
    return Path("~/.cache/jaxrobust/tensorflow_datasets").expanduser()


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """`data_dir` as an absolute path, or the default one when None."""
    return (Path(data_dir).expanduser() if data_dir is not None else default_data_dir()).absolute()


DatasetKwargs = Mapping[str, Any] | None
"""Parameters of a dataset (`DatasetInfo.kwargs` names those it accepts); None = none."""


def check_kwargs(name: str, dataset_kwargs: DatasetKwargs = None) -> dict[str, Any]:
    """`dataset_kwargs` of dataset `name` as a plain dict, checked.

    Raises:
      DatasetError: unknown dataset, a dataset that takes no parameters given some, or
        (for `shapes`) an unknown parameter or a bad value, named in the message.
    """
    info = get_info(name)
    if dataset_kwargs is None:
        return {}
    if not isinstance(dataset_kwargs, Mapping):
        raise DatasetError(
            f"dataset_kwargs must be a mapping of parameter names to values, got {dataset_kwargs!r}"
        )
    kwargs = dict(dataset_kwargs)
    if kwargs and not info.kwargs:
        raise DatasetError(
            f"dataset {name!r} takes no dataset_kwargs, got {kwargs}; datasets with "
            f"parameters: {', '.join(n for n, i in sorted(DATASETS.items()) if i.kwargs)}"
        )
    if info.tfds_name == "shapes":
        from jaxrobust.data.shapes import shapes_params

        shapes_params(kwargs)  # raises DatasetError naming a bad parameter
    return kwargs


def _builder(info: DatasetInfo, root: Path, dataset_kwargs: DatasetKwargs = None) -> Any:
    """A fresh tfds builder reading/writing under `root` (fresh: it reads what is on disk)."""
    import tensorflow_datasets as tfds

    from jaxrobust.data import derived
    from jaxrobust.data.digits import TFDS_NAME, DigitsBuilder
    from jaxrobust.data.shapes import TFDS_NAME as SHAPES_NAME
    from jaxrobust.data.shapes import ShapesBuilder, shapes_params

    kwargs = check_kwargs(info.name, dataset_kwargs)
    if derived.is_derived(info.tfds_name):  # a folder of its own, not under `root`
        return derived.derived_builder(info.tfds_name)
    # Direct, so they work even if tfds skipped registering them.
    if info.tfds_name == TFDS_NAME:
        return DigitsBuilder(data_dir=os.fspath(root))
    if info.tfds_name == SHAPES_NAME:
        return ShapesBuilder.for_params(shapes_params(kwargs), data_dir=os.fspath(root))
    return tfds.builder(info.tfds_name, data_dir=os.fspath(root))


def _prepared(builder: Any) -> bool:
    # Look before asking tfds: on a missing folder it logs a spurious absl warning.
    return bool(Path(builder.data_path).is_dir() and builder.is_prepared())


def is_prepared(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    dataset_kwargs: DatasetKwargs = None,
) -> bool:
    """Whether dataset `name` (with `dataset_kwargs`) is already prepared under `data_dir`
    (never downloads)."""
    return _prepared(_builder(get_info(name), resolve_data_dir(data_dir), dataset_kwargs))


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Exclusive inter-process lock on `path` (created if missing), released on exit."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence tfds' banners and progress bars (the digits build takes a fraction of a second)."""
    from tensorflow_datasets.core.utils import tqdm_utils

    active = tqdm_utils._active
    tqdm_utils.display_progress_bar(False)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        tqdm_utils.display_progress_bar(active)


def _uses_proxy() -> bool:
    keys = ("https_proxy", "http_proxy", "all_proxy")
    return any(os.environ.get(k) or os.environ.get(k.upper()) for k in keys)


def _reachable(url: str, timeout: float = NETWORK_TIMEOUT_S) -> tuple[bool, str]:
    """Can a TCP connection to `url`'s host be opened within `timeout` seconds?

    DNS lookups ignore socket timeouts and can stall for tens of seconds on a machine
    without network, so the whole probe runs in a daemon thread with a hard deadline.
    """
    parsed = urlparse(url)
    host = parsed.hostname or url
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    result: list[str] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append("")
        except OSError as e:
            result.append(f"{type(e).__name__}: {e}")

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    if not result:
        return False, f"no answer from {host}:{port} within {timeout:g} s"
    if result[0]:
        return False, f"cannot reach {host}:{port} ({result[0]})"
    return True, ""


def _offline_message(info: DatasetInfo, root: Path, reason: str) -> str:
    src = f"; tfds fetches it from {info.source_url}" if info.source_url else ""
    return (
        f"dataset {info.name!r} is not prepared in {root} and cannot be prepared here: "
        f"{reason}.\n"
        f"{info.name!r} needs a one-time download through tensorflow-datasets (network "
        f"access{src}). Prepare it on a machine with network access:\n"
        f"    python -c \"import jaxrobust.data as d; d.prepare('{info.name}', "
        "data_dir='DIR')\"\n"
        f"  (or `tfds build {info.tfds_name} --file_format=array_record --data_dir=DIR`),\n"
        f"copy DIR here and pass data_dir=DIR or set {DATA_DIR_ENV}=DIR.\n"
        "Offline, use dataset=digits (embedded) or dataset=shapes (generated): they need "
        "no download."
    )


def prepare(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    download: bool = True,
    dataset_kwargs: DatasetKwargs = None,
) -> Path:
    """Make sure dataset `name` is prepared (array_record files) under `data_dir`.

    Safe to call from several processes at once. `digits` and `shapes` always build
    locally; other datasets are downloaded through tensorflow-datasets unless
    `download=False`. `dataset_kwargs`: the dataset's parameters (`DatasetInfo.kwargs`).

    Returns:
      The prepared dataset's directory (`data_dir/tfds_name/version`, or
      `data_dir/tfds_name/config/version` for a dataset with parameters).

    Raises:
      DatasetError: unknown name, or a download dataset that is not prepared and cannot
        be prepared here (downloads disabled, offline, missing module, failed download).
    """
    info = get_info(name)
    root = resolve_data_dir(data_dir)
    builder = _builder(info, root, dataset_kwargs)
    if _prepared(builder):
        return Path(builder.data_dir)
    if not info.offline:
        # Fail in seconds instead of hanging on a network that is not there.
        if not download:
            raise DatasetError(_offline_message(info, root, "downloads are disabled"))
        if info.source_url and not _uses_proxy():
            ok, why = _reachable(info.source_url)
            if not ok:
                raise DatasetError(_offline_message(info, root, f"no network ({why})"))
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DatasetError(f"cannot create data_dir {root} to prepare {name!r}: {e}") from e
    with _file_lock(root / f".{info.tfds_name}.jaxrobust.lock"):
        # Re-read: another process may have just prepared it.
        builder = _builder(info, root, dataset_kwargs)
        if not _prepared(builder):
            try:
                with _quiet() if info.offline else contextlib.nullcontext():
                    builder.download_and_prepare(file_format="array_record")
            except Exception as e:
                if info.offline:
                    raise DatasetError(f"building dataset {name!r} in {root} failed: {e}") from e
                reason = f"preparing it failed with {type(e).__name__}: {e}"
                if isinstance(e, ModuleNotFoundError) and e.name:
                    reason += f" (tensorflow-datasets needs `pip install {e.name}` to download)"
                raise DatasetError(_offline_message(info, root, reason)) from e
            builder = _builder(info, root, dataset_kwargs)
    return Path(builder.data_dir)


def data_source(
    name: str,
    split: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    download: bool = True,
    dataset_kwargs: DatasetKwargs = None,
) -> Any:
    """A random-access source of split `split` of dataset `name`, preparing it if needed.

    `dataset_kwargs`: the dataset's parameters (`DatasetInfo.kwargs`), e.g.
    `{"planted": True}` for `shapes`.

    Returns:
      tfds' `ArrayRecordDataSource`: `len(src)` records, `src[i]` a dict
      `{"image": np.ndarray (H, W, C), "label": int}` (uint8 images for downloaded
      datasets, float32 in [0, 1] for digits and shapes; shapes records also have a
      `pattern` field). See `loader.to_arrays` for the canonical
      float32 form.

    Raises:
      DatasetError: see `prepare`; also an unknown split, or data prepared in a format
        without random access (e.g. tfrecord).
    """
    info = get_info(name)
    root = resolve_data_dir(data_dir)
    prepare(name, root, download=download, dataset_kwargs=dataset_kwargs)
    builder = _builder(info, root, dataset_kwargs)
    available = list(builder.info.splits.keys())
    base = str(split).split("[", 1)[0]  # tfds slicing syntax, e.g. "train[:10%]".
    if base not in available:
        raise DatasetError(
            f"dataset {name!r} has no split {split!r}; available splits: {', '.join(available)}"
        )
    try:
        return builder.as_data_source(split)
    except Exception as e:
        raise DatasetError(
            f"cannot open split {split!r} of {name!r} in {builder.data_dir} for random access "
            f"({type(e).__name__}: {e}); prepare it with file_format='array_record' "
            f"(e.g. `tfds build {info.tfds_name} --file_format=array_record`)"
        ) from e
