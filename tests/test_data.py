"""Tests of jaxrobust.data: the offline digits dataset, loaders, augmentation, resume, errors."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import grain
import numpy as np
import pytest

import jaxrobust.data as jd
from jaxrobust.data import datasets as ds_mod
from jaxrobust.errors import ConfigError, DatasetError


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One prepared data_dir per test session (per xdist worker), never ~/.cache."""
    d = tmp_path_factory.mktemp("tfds")
    with pytest.MonkeyPatch.context() as mp:
        # Anything that falls back to the default data_dir stays inside the tmp dir too.
        mp.setenv(jd.DATA_DIR_ENV, os.fspath(d))
        jd.prepare("digits", d)
        yield d


@pytest.fixture(scope="session")
def digits_test(data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    return jd.load_split("digits", "test", data_dir=data_dir)


def _digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _take(it, n: int) -> list[dict[str, np.ndarray]]:
    return [next(it) for _ in range(n)]


def _concat(batches: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([b[k] for b in batches]) for k in ("image", "label")}


def _sorted_rows(x: np.ndarray) -> np.ndarray:
    flat = x.reshape(len(x), -1)
    return flat[np.lexsort(flat.T[::-1])]


# --- the digits dataset -----------------------------------------------------------------


def test_digits_splits_shapes_range_classes(data_dir: Path) -> None:
    assert jd.is_prepared("digits", data_dir)
    assert len(jd.data_source("digits", "train", data_dir)) == 1437
    assert len(jd.data_source("digits", "test", data_dir)) == 360
    for split, n in (("train", 1437), ("test", 360)):
        x, y = jd.load_split("digits", split, data_dir=data_dir)
        assert x.shape == (n, 8, 8, 1) and x.dtype == np.float32
        assert y.shape == (n,) and y.dtype == np.int32
        assert x.min() == 0.0 and x.max() == 1.0
        assert set(np.unique(y).tolist()) == set(range(10))


def test_digits_records_are_the_sklearn_split_in_order(data_dir: Path) -> None:
    from jaxrobust.data.digits import digits_arrays

    for split, (x_ref, y_ref) in digits_arrays().items():
        x, y = jd.load_split("digits", split, data_dir=data_dir)
        np.testing.assert_array_equal(x, x_ref)
        np.testing.assert_array_equal(y, y_ref)
    # The raw source record: float32 image, integer label.
    rec = jd.data_source("digits", "train", data_dir)[0]
    assert rec["image"].shape == (8, 8, 1) and rec["image"].dtype == np.float32


def test_digits_split_is_fixed_across_builds(data_dir: Path, tmp_path: Path) -> None:
    jd.prepare("digits", tmp_path)
    for split in ("train", "test"):
        a = jd.load_split("digits", split, data_dir=data_dir)
        b = jd.load_split("digits", split, data_dir=tmp_path)
        assert _digest(*a) == _digest(*b)


def test_digits_registered_with_tfds(data_dir: Path) -> None:
    import tensorflow_datasets as tfds

    builder = tfds.builder("digits", data_dir=os.fspath(data_dir))
    assert isinstance(builder, jd.DigitsBuilder)
    assert builder.info.splits["train"].num_examples == 1437
    assert builder.info.features["label"].num_classes == 10


def test_load_split_limit(data_dir: Path, digits_test) -> None:
    x, y = jd.load_split("digits", "test", data_dir=data_dir, limit=10)
    assert x.shape == (10, 8, 8, 1) and y.shape == (10,)
    np.testing.assert_array_equal(x, digits_test[0][:10])
    assert jd.load_split("digits", "test", data_dir=data_dir, limit=10_000)[0].shape[0] == 360


def test_default_data_dir_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(jd.DATA_DIR_ENV, os.fspath(tmp_path))
    assert jd.default_data_dir() == tmp_path
    monkeypatch.delenv(jd.DATA_DIR_ENV)
    assert jd.default_data_dir() == Path("~/.cache/jaxrobust/tensorflow_datasets").expanduser()


def test_concurrent_prepare_is_safe(tmp_path: Path) -> None:
    code = (
        "import sys, jaxrobust.data as d; d.prepare('digits', sys.argv[1]); "
        "print(len(d.data_source('digits', 'train', sys.argv[1])))"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, os.fspath(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        assert out.strip().splitlines()[-1] == "1437"
    assert not list((tmp_path / "digits").glob("*incomplete*"))


# --- registry and errors -----------------------------------------------------------------


def test_registry_entries() -> None:
    assert set(jd.DATASETS) == {
        "digits",
        "shapes",
        "mnist",
        "fashion_mnist",
        "cifar10",
        "svhn_cropped",
    }
    for name, info in jd.DATASETS.items():
        assert info.name == name
        assert len(info.mean) == len(info.std) == info.image_shape[-1]
        assert info.num_classes == 10
    assert jd.get_info("digits").offline and not jd.get_info("mnist").offline
    assert jd.get_info("cifar10").augment and jd.get_info("cifar10").flip
    assert jd.get_info("svhn_cropped").augment and not jd.get_info("svhn_cropped").flip


def test_unknown_dataset_raises(data_dir: Path) -> None:
    with pytest.raises(DatasetError, match=r"unknown dataset 'imagenet'.*cifar10.*digits.*mnist"):
        jd.get_info("imagenet")
    with pytest.raises(DatasetError):
        jd.data_source("imagenet", "train", data_dir)
    with pytest.raises(DatasetError):
        jd.make_loader("imagenet", "train", batch_size=8, seed=0, data_dir=data_dir)
    with pytest.raises(DatasetError, match=r"no split 'validation'.*train, test"):
        jd.load_split("digits", "validation", data_dir=data_dir)


def _assert_offline_message(err: DatasetError, name: str) -> None:
    msg = str(err)
    assert repr(name) in msg and "digits" in msg
    assert "download" in msg and "tensorflow-datasets" in msg
    assert "data_dir" in msg and jd.DATA_DIR_ENV in msg


def test_download_dataset_without_download_raises(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as exc:
        jd.data_source("mnist", "train", tmp_path, download=False)
    _assert_offline_message(exc.value, "mnist")


def test_download_dataset_offline_raises_fast(tmp_path: Path) -> None:
    url = jd.get_info("mnist").source_url
    if ds_mod._reachable(url, timeout=1.0)[0]:
        pytest.skip("network available: mnist could really be downloaded here")
    t0 = time.perf_counter()
    with pytest.raises(DatasetError) as exc:
        jd.data_source("mnist", "train", data_dir=tmp_path)
    assert time.perf_counter() - t0 < 10.0
    _assert_offline_message(exc.value, "mnist")


def test_prepared_download_dataset_is_read_without_network(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A download-only entry whose data someone prepared into data_dir beforehand (here:
    # the digits files) is read as is; the same entry over an empty dir is refused.
    fake = dataclasses.replace(jd.get_info("digits"), name="remote", offline=False)
    monkeypatch.setitem(jd.DATASETS, "remote", fake)
    assert len(jd.data_source("remote", "test", data_dir, download=False)) == 360
    with pytest.raises(DatasetError, match="'remote'"):
        jd.data_source("remote", "test", tmp_path, download=False)


# --- loaders --------------------------------------------------------------------------


def test_loader_batches(data_dir: Path) -> None:
    loader = jd.make_loader("digits", "train", batch_size=32, seed=0, data_dir=data_dir)
    it = iter(loader)
    for batch in _take(it, 3):
        assert set(batch) == {"image", "label"}
        assert batch["image"].shape == (32, 8, 8, 1) and batch["image"].dtype == np.float32
        assert batch["label"].shape == (32,) and batch["label"].dtype == np.int32
        assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0


def test_one_epoch_covers_the_split(data_dir: Path) -> None:
    x, y = jd.load_split("digits", "train", data_dir=data_dir)
    loader = jd.make_loader(
        "digits", "train", batch_size=100, seed=3, num_epochs=1, drop_remainder=False,
        data_dir=data_dir,
    )  # fmt: skip
    batches = list(loader)
    assert [len(b["label"]) for b in batches] == [100] * 14 + [37]
    got = _concat(batches)
    np.testing.assert_array_equal(_sorted_rows(got["image"]), _sorted_rows(x))
    np.testing.assert_array_equal(np.sort(got["label"]), np.sort(y))
    # drop_remainder drops the last partial batch.
    loader = jd.make_loader("digits", "train", batch_size=100, seed=3, num_epochs=1,
                            data_dir=data_dir)  # fmt: skip
    assert len(list(loader)) == 14


def test_no_shuffle_is_record_order(data_dir: Path, digits_test) -> None:
    loader = jd.make_loader(
        "digits", "test", batch_size=60, seed=0, shuffle=False, num_epochs=1, data_dir=data_dir
    )
    got = _concat(list(loader))
    np.testing.assert_array_equal(got["image"], digits_test[0])
    np.testing.assert_array_equal(got["label"], digits_test[1])


def test_seed_controls_order(data_dir: Path) -> None:
    def labels(seed: int) -> np.ndarray:
        loader = jd.make_loader("digits", "train", batch_size=64, seed=seed, data_dir=data_dir)
        return _concat(_take(iter(loader), 3))["label"]

    np.testing.assert_array_equal(labels(1), labels(1))
    assert not np.array_equal(labels(1), labels(2))


def test_epochs_are_reshuffled(data_dir: Path) -> None:
    loader = jd.make_loader(
        "digits", "test", batch_size=360, seed=0, num_epochs=2, data_dir=data_dir
    )
    e1, e2 = list(loader)
    assert not np.array_equal(e1["label"], e2["label"])
    np.testing.assert_array_equal(np.sort(e1["label"]), np.sort(e2["label"]))


@pytest.mark.parametrize("augment", [False, True])
def test_resume_from_state(data_dir: Path, augment: bool) -> None:
    def make():
        return jd.make_loader(
            "digits", "train", batch_size=50, seed=7, augment=augment, data_dir=data_dir
        )

    it = iter(make())
    _take(it, 5)
    state = jd.loader_state(it)
    state = json.loads(json.dumps(state))  # It must survive a JSON round trip.
    expected = _take(it, 40)  # Crosses the epoch boundary (1437 / 50 ≈ 29 batches).

    it2 = jd.restore_loader_state(iter(make()), state)
    for a, b in zip(expected, _take(it2, 40), strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])

    # grain's own bytes API works the same way.
    it3 = iter(make())
    it3.set_state(json.dumps(state).encode())
    np.testing.assert_array_equal(next(it3)["label"], expected[0]["label"])


def test_restore_into_other_loader_raises(data_dir: Path) -> None:
    it = iter(jd.make_loader("digits", "train", batch_size=50, seed=7, data_dir=data_dir))
    next(it)
    state = jd.loader_state(it)
    other = iter(jd.make_loader("digits", "train", batch_size=50, seed=8, data_dir=data_dir))
    with pytest.raises(ConfigError, match="cannot restore"):
        jd.restore_loader_state(other, state)


def test_shards_are_disjoint_and_cover(data_dir: Path, digits_test) -> None:
    shards = [
        _concat(
            list(
                jd.make_loader(
                    "digits", "test", batch_size=7, seed=0, shuffle=shuffle, num_epochs=1,
                    drop_remainder=False, data_dir=data_dir, shard_index=i, shard_count=3,
                )
            )
        )
        for shuffle in (False, True)
        for i in range(3)
    ]  # fmt: skip
    ordered, shuffled = shards[:3], shards[3:]
    assert [len(s["label"]) for s in ordered] == [120, 120, 120]
    # Unshuffled shards are consecutive record ranges: concatenated, they are the split.
    np.testing.assert_array_equal(np.concatenate([s["image"] for s in ordered]), digits_test[0])
    # Shuffling permutes within each shard only.
    for a, b in zip(ordered, shuffled, strict=True):
        np.testing.assert_array_equal(_sorted_rows(a["image"]), _sorted_rows(b["image"]))


def test_uneven_shards(data_dir: Path) -> None:
    def sizes(drop: bool) -> list[int]:
        return [
            sum(
                len(b["label"])
                for b in jd.make_loader(
                    "digits", "train", batch_size=1, seed=0, num_epochs=1, drop_remainder=drop,
                    data_dir=data_dir, shard_index=i, shard_count=4,
                )
            )
            for i in range(4)
        ]  # fmt: skip

    assert sizes(False) == [360, 359, 359, 359]  # Cover all 1437 records.
    assert sizes(True) == [359] * 4  # Equal step counts on every process.


def test_shard_sampler_epochs() -> None:
    opts = grain.sharding.ShardOptions(shard_index=0, shard_count=4)
    sampler = jd.ShardSampler(10, opts, shuffle=True, num_epochs=2, seed=0)
    assert jd.shard_range(10, 0, 4, even=False) == range(0, 3)
    assert jd.shard_range(10, 3, 4, even=False) == range(8, 10)
    assert jd.shard_range(10, 3, 4, even=True) == range(6, 8)
    assert len(sampler) // 4 == 6  # 3 records x 2 epochs on this shard.
    keys = [sampler[4 * p].record_key for p in range(6)]
    assert sorted(keys[:3]) == sorted(keys[3:]) == [0, 1, 2]  # Each epoch covers the shard.
    with pytest.raises(IndexError):
        sampler[4 * 6]
    # Per-record generators differ between records and shards.
    other = jd.ShardSampler(10, dataclasses.replace(opts, shard_index=1), shuffle=True,
                            num_epochs=2, seed=0)  # fmt: skip
    draws = {float(s[i].rng.random()) for s, i in ((sampler, 0), (sampler, 4), (other, 1))}
    assert len(draws) == 3
    assert (
        jd.ShardSampler(10, opts, shuffle=False, num_epochs=1, seed=0, with_rng=False)[0].rng
        is None
    )


def test_bad_loader_arguments(data_dir: Path) -> None:
    kw = {"data_dir": data_dir}
    with pytest.raises(ConfigError, match="batch_size"):
        jd.make_loader("digits", "train", batch_size=0, seed=0, **kw)
    with pytest.raises(ConfigError, match="seed"):
        jd.make_loader("digits", "train", batch_size=8, seed=-1, **kw)
    with pytest.raises(ConfigError, match="shard_index"):
        jd.make_loader("digits", "train", batch_size=8, seed=0, shard_index=2, shard_count=2, **kw)
    with pytest.raises(ConfigError, match="num_epochs"):
        jd.make_loader("digits", "train", batch_size=8, seed=0, num_epochs=0, **kw)


# --- conversion and augmentation -------------------------------------------------------


def test_to_arrays_scales_uint8() -> None:
    rec = {"image": np.full((4, 4, 3), 255, np.uint8), "label": np.int64(3), "id": "x"}
    out = jd.to_arrays(rec)
    assert set(out) == {"image", "label"}
    assert out["image"].dtype == np.float32 and out["image"].max() == 1.0
    assert out["label"].dtype == np.int32 and out["label"] == 3
    grey = jd.to_arrays({"image": np.zeros((4, 4), np.uint8), "label": 0})
    assert grey["image"].shape == (4, 4, 1)


def test_augmentation_configuration() -> None:
    assert jd.augmentation("digits") == jd.RandomCropFlip(pad=1, crop=True, flip=False)
    assert jd.augmentation("mnist").pad == 3
    assert jd.augmentation("cifar10") == jd.RandomCropFlip(pad=4, crop=True, flip=True)
    assert not jd.augmentation("svhn_cropped").flip


def test_random_crop_flip_unit() -> None:
    img = np.arange(16, dtype=np.float32).reshape(4, 4, 1) / 15
    # Flip only: every output is the image or its mirror, and both occur.
    outs = [
        jd.random_crop_flip(img, np.random.default_rng(s), pad=1, crop=False) for s in range(20)
    ]
    assert all(np.array_equal(o, img) or np.array_equal(o, img[:, ::-1]) for o in outs)
    assert any(np.array_equal(o, img[:, ::-1]) for o in outs)
    # Crop only: a shift by at most `pad` pixels with zeros shifted in.
    for s in range(20):
        o = jd.random_crop_flip(img, np.random.default_rng(s), pad=1, flip=False)
        assert o.shape == img.shape and 0.0 <= o.min() and o.max() <= 1.0
        padded = np.pad(img, ((1, 1), (1, 1), (0, 0)))
        windows = [padded[i : i + 4, j : j + 4] for i in range(3) for j in range(3)]
        assert any(np.array_equal(o, w) for w in windows)
    # Same generator state, same result.
    a = jd.random_crop_flip(img, np.random.default_rng(5), pad=1)
    b = jd.random_crop_flip(img, np.random.default_rng(5), pad=1)
    np.testing.assert_array_equal(a, b)


def test_augmented_loader(data_dir: Path) -> None:
    def first(seed: int, augment: bool) -> dict[str, np.ndarray]:
        loader = jd.make_loader(
            "digits", "train", batch_size=128, seed=seed, shuffle=False, augment=augment,
            data_dir=data_dir,
        )  # fmt: skip
        return next(iter(loader))

    plain, aug = first(0, False), first(0, True)
    assert aug["image"].shape == plain["image"].shape and aug["image"].dtype == np.float32
    assert 0.0 <= aug["image"].min() and aug["image"].max() <= 1.0
    np.testing.assert_array_equal(aug["label"], plain["label"])  # Same records, unshuffled.
    assert not np.array_equal(aug["image"], plain["image"])
    np.testing.assert_array_equal(first(0, True)["image"], aug["image"])  # Deterministic.
    assert not np.array_equal(first(1, True)["image"], aug["image"])  # Seed-dependent.
    # augment=None picks the dataset default (off for digits).
    default = jd.make_loader(
        "digits", "train", batch_size=128, seed=0, shuffle=False, augment=None, data_dir=data_dir
    )
    np.testing.assert_array_equal(next(iter(default))["image"], plain["image"])


# --- class subsets (e.g. CIFAR-10 dog vs cat) -------------------------------------------


def test_class_subset_keeps_and_relabels_the_chosen_classes(data_dir: Path, tmp_path) -> None:
    """Digits 5 and 3 (in that order) become classes 0 and 1: every record of them, in
    source order, with the images unchanged; the name trains and loads like any dataset,
    and asking again reuses the folder."""
    name = jd.write_class_subset(tmp_path / "d53", "digits", (5, 3), data_dir=data_dir)
    info = jd.get_info(name)
    assert info.num_classes == 2 and info.image_shape == (8, 8, 1)
    assert info.mean == jd.get_info("digits").mean
    for split in ("train", "test"):
        x, y = jd.load_split("digits", split, data_dir=data_dir)
        xs, ys = jd.load_split(name, split)
        keep = (y == 5) | (y == 3)
        np.testing.assert_array_equal(xs, x[keep])
        np.testing.assert_array_equal(ys, np.where(y[keep] == 5, 0, 1))
    stamp = (tmp_path / "d53" / "dataset.json").stat().st_mtime_ns
    assert jd.write_class_subset(tmp_path / "d53", "digits", [5, 3], data_dir=data_dir) == name
    assert (tmp_path / "d53" / "dataset.json").stat().st_mtime_ns == stamp
    for bad in ((5,), (3, 3), (3, 10), (-1, 2), (3.0, 5), "35", (True, 3)):
        with pytest.raises(DatasetError, match="at least 2 distinct class indices"):
            jd.write_class_subset(tmp_path / "bad", "digits", bad, data_dir=data_dir)
    with pytest.raises(DatasetError, match="unknown dataset"):
        jd.write_class_subset(tmp_path / "bad", "no_such_set", (0, 1))
