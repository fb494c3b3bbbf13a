"""Tests of the generated `shapes` dataset: the generator, the planted feature, tfds, the CLI."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxrobust.data as jd
from jaxrobust.data import shapes as S
from jaxrobust.errors import DatasetError

SMALL = {"num_train": 400, "num_test": 200}
PLANTED = {**SMALL, "planted": True}


@pytest.fixture(scope="module")
def planted_arrays() -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    return S.shapes_arrays({**PLANTED, "planted_rate": 0.7, "planted_correlation": 0.6})


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tfds-shapes")


# --- parameters ---------------------------------------------------------------------------


def test_params_defaults_and_config_names() -> None:
    p = S.shapes_params({})
    assert p == S.shapes_params(None) == S.ShapesParams()
    assert (p.num_train, p.num_test, p.planted) == (20_000, 5_000, False)
    assert S.config_name(p) == "seed0"
    assert S.split_names(p) == ("train", "test")
    q = S.shapes_params({"planted": True, "seed": 7})
    assert S.config_name(q) == "seed7-planted-norm0.5-rate1.0-corr1.0"
    assert S.split_names(q) == ("train", "test", "test_clean", "test_shuffled")
    # Every parameter that matters changes the name (and so the folder).
    names = {
        S.config_name(S.shapes_params(kw))
        for kw in (
            {},
            {"seed": 1},
            {"num_train": 100},
            {"num_test": 100},
            {"planted": True},
            {"planted": True, "planted_norm": 0.25},
            {"planted": True, "planted_rate": 0.5},
            {"planted": True, "planted_correlation": 0.5},
            # Integers and floats of the same value name the same data.
            {"planted": True, "planted_norm": 0.1 + 0.2},
        )
    }
    assert len(names) == 9
    assert S.config_name(S.shapes_params({"planted": True, "planted_rate": 1})) == S.config_name(
        S.shapes_params({"planted": True, "planted_rate": 1.0})
    )


_NOT_A_NUMBER = st.one_of(st.text(max_size=3), st.none(), st.booleans(), st.just([0.5]))
_BAD = {
    "planted_norm": st.one_of(
        st.floats(max_value=-1e-9),
        st.floats(min_value=S.MAX_PLANTED_NORM + 1e-6),
        st.sampled_from([math.nan, math.inf, -math.inf]),
        _NOT_A_NUMBER,
    ),
    "planted_rate": st.one_of(
        st.floats(max_value=-1e-9), st.floats(min_value=1 + 1e-9), _NOT_A_NUMBER
    ),
    "planted_correlation": st.one_of(
        st.floats(max_value=-1e-9), st.floats(min_value=1 + 1e-9), _NOT_A_NUMBER
    ),
    "seed": st.one_of(
        st.integers(max_value=-1), st.integers(min_value=2**32), st.floats(), _NOT_A_NUMBER
    ),
    "num_train": st.one_of(st.integers(max_value=0), st.floats(), _NOT_A_NUMBER),
    "num_test": st.one_of(st.integers(max_value=0), st.floats(), _NOT_A_NUMBER),
    "planted": st.one_of(st.integers(), st.text(max_size=3), st.none()),
}


@settings(max_examples=150, deadline=None)
@given(data=st.data(), name=st.sampled_from(sorted(_BAD)))
def test_bad_parameters_raise_naming_the_parameter(data: st.DataObject, name: str) -> None:
    value = data.draw(_BAD[name])
    kwargs = {"planted": True, name: value}
    with pytest.raises(DatasetError, match=rf"\b{name}\b"):
        S.shapes_params(kwargs)
    # The same check runs wherever the dataset is named, before anything is built.
    with pytest.raises(DatasetError, match=rf"\b{name}\b"):
        jd.check_kwargs("shapes", kwargs)


def test_other_parameter_errors() -> None:
    with pytest.raises(DatasetError, match=r"unknown dataset_kwargs 'norm'.*planted_norm"):
        S.shapes_params({"norm": 0.5})
    # A planted_* parameter without planted=True would be silently ignored: refuse it.
    with pytest.raises(DatasetError, match=r"planted_rate is only used with planted=True"):
        S.shapes_params({"planted_rate": 0.5})
    with pytest.raises(DatasetError, match=r"'digits' takes no dataset_kwargs.*shapes"):
        jd.check_kwargs("digits", {"planted": True})
    with pytest.raises(DatasetError, match=r"dataset_kwargs must be a mapping"):
        jd.check_kwargs("shapes", [("planted", True)])
    with pytest.raises(DatasetError, match=r"unknown dataset 'shapez'.*shapes"):
        jd.check_kwargs("shapez", {})
    assert jd.check_kwargs("digits", None) == jd.check_kwargs("digits", {}) == {}


# --- the images ---------------------------------------------------------------------------


def test_deterministic_by_seed() -> None:
    a = S.shapes_arrays({**SMALL, "seed": 3})
    b = S.shapes_arrays({**SMALL, "seed": 3})
    c = S.shapes_arrays({**SMALL, "seed": 4})
    for split in ("train", "test"):
        for u, v in zip(a[split], b[split], strict=True):
            np.testing.assert_array_equal(u, v)
        assert not np.array_equal(a[split][0], c[split][0])
        assert not np.array_equal(a[split][1], c[split][1])
    # Train and test are different draws.
    assert not np.array_equal(a["train"][0][:200], a["test"][0])
    # The planted variant is the same base images plus patterns: the same stream.
    p = S.shapes_arrays({**PLANTED, "seed": 3})
    np.testing.assert_array_equal(p["test_clean"][0], a["test"][0])
    np.testing.assert_array_equal(p["train"][1], a["train"][1])


@pytest.mark.parametrize("split", ["train", "test"])
def test_shapes_dtypes_ranges_and_balance(split: str) -> None:
    x, y, pattern = S.shapes_arrays(SMALL)[split]
    n = SMALL[f"num_{split}"]
    assert x.shape == (n, 32, 32, 3) and x.dtype == np.float32
    assert y.shape == (n,) and y.dtype == np.int64
    assert x.min() >= S.MARGIN - 1e-7 and x.max() <= 1 - S.MARGIN + 1e-7
    counts = np.bincount(y, minlength=S.NUM_CLASSES)
    assert len(counts) == S.NUM_CLASSES == len(S.CLASS_NAMES) >= 10
    assert counts.max() - counts.min() <= 1  # balanced: n // 10 or one more per class
    np.testing.assert_array_equal(pattern, -1)
    # Images are not constant and differ from each other (clutter, pose, colour).
    assert x.reshape(n, -1).std(axis=1).min() > 0.01
    assert len(np.unique(x.reshape(n, -1), axis=0)) == n


def test_every_class_is_drawn_as_its_own_shape() -> None:
    """The shape (coverage) of each class differs: a clean silhouette per class, rendered
    at the centre without clutter, matches its own class best."""
    n = S.NUM_CLASSES
    masks = []
    for k in range(n):
        p = {
            "label": np.array([k]),
            "scale": np.array([10.0]),
            "cx": np.array([16.0]),
            "cy": np.array([16.0]),
            "angle": np.array([0.0]),
            "bg": np.zeros((1, 3)),
            "fg": np.ones((1, 3)),
            "grad_dir": np.zeros(1),
            "grad_col": np.zeros((1, 3)),
            "texture": np.zeros(1, int),
            "tex_col": np.zeros((1, 3)),
            "tex_amount": np.zeros(1),
            "tex_freq": np.full(1, 0.2),
            "tex_angle": np.zeros(1),
            "tex_phase": np.zeros(1),
            "blob_xy": np.zeros((1, 1, 2)),
            "blob_sigma": np.ones((1, 1)),
            "blob_col": np.zeros((1, 1, 3)),
            "line_xy": np.zeros((1, 1, 2)),
            "line_angle": np.zeros((1, 1)),
            "line_width": np.ones((1, 1)),
            "line_col": np.zeros((1, 1, 3)),
            "noise_sigma": np.zeros(1),
        }
        img = S._render(p, np.random.default_rng(0))[0, ..., 0]
        masks.append((img - S.MARGIN) / (1 - 2 * S.MARGIN))
    masks = np.stack(masks)
    # Anti-aliased: some pixels are partly covered.
    assert np.any((masks > 0.05) & (masks < 0.95))
    areas = masks.sum(axis=(1, 2))
    assert areas.min() > 40  # every shape covers a visible area at scale 10
    diff = np.abs(masks[:, None] - masks[None]).sum(axis=(2, 3))
    off = diff[~np.eye(n, dtype=bool)]
    assert off.min() > 10  # no two classes draw the same silhouette


# --- the planted feature ------------------------------------------------------------------


def test_patterns_norm_high_frequency_and_distinct() -> None:
    for norm in (0.0, 0.5, 2.0):
        p = S.planted_patterns(0, norm)
        assert p.shape == (S.NUM_CLASSES, 32, 32, 3) and p.dtype == np.float32
        np.testing.assert_allclose(
            np.linalg.norm(p.reshape(S.NUM_CLASSES, -1), axis=1), norm, rtol=1e-6
        )
        np.testing.assert_allclose(np.abs(p), norm / math.sqrt(3072), rtol=1e-6)
    p = S.planted_patterns(0, 0.5)
    np.testing.assert_array_equal(p, S.planted_patterns(0, 0.5))
    assert not np.array_equal(p, S.planted_patterns(1, 0.5))
    # A texture: one 4x4x3 tile repeated, zero mean per channel.
    np.testing.assert_array_equal(p, np.roll(p, (S.TILE, S.TILE), axis=(1, 2)))
    np.testing.assert_allclose(p.mean(axis=(1, 2)), 0, atol=1e-9)
    # High frequency: all energy at 8 or more cycles per image (periods of 4 px or less).
    energy = np.abs(np.fft.fft2(p, axes=(1, 2))) ** 2
    f = np.abs(np.fft.fftfreq(32) * 32)
    high = np.maximum(f[:, None], f[None, :]) >= 8
    assert (energy * high[None, :, :, None]).sum() / energy.sum() > 0.999
    # Far apart, also under shifts: a model can tell the classes' patterns apart, even
    # one that looks at them locally (a convolution).
    tiles = p[:, : S.TILE, : S.TILE] / np.abs(p).max()
    dim = tiles[0].size
    for k in range(S.NUM_CLASSES):
        for m in range(k):
            assert abs(np.sum(tiles[k] * tiles[m])) / dim <= 0.3
            for di in range(S.TILE):
                for dj in range(S.TILE):
                    shifted = np.roll(tiles[m], (di, dj), axis=(0, 1))
                    assert abs(np.sum(tiles[k] * shifted)) / dim <= 0.5


@pytest.mark.parametrize("norm", [0.5, 1.1])
def test_planted_perturbation_norm_after_clipping(norm: float) -> None:
    arrays = S.shapes_arrays({**PLANTED, "planted_norm": norm})
    clean = S.shapes_arrays(SMALL)
    patterns = S.planted_patterns(0, norm)
    for split, base in (("train", clean["train"][0]), ("test", clean["test"][0])):
        x, _, pattern = arrays[split]
        assert x.min() >= 0 and x.max() <= 1
        delta = (x.astype(np.float64) - base).reshape(len(x), -1)
        carriers = pattern >= 0
        assert carriers.all()  # rate 1
        # Up to norm MARGIN * sqrt(3072) ~ 1.108 nothing is clipped: the norm is exact
        # up to float32 rounding of the sums (values ~0.5, ulp 6e-8, per pixel < 1e-5 rel).
        np.testing.assert_allclose(np.linalg.norm(delta, axis=1), norm, rtol=1e-4)
        np.testing.assert_allclose(delta, patterns[pattern].reshape(len(x), -1), atol=1e-6, rtol=0)


def test_large_norms_are_clipped_into_the_box() -> None:
    x, _, _ = S.shapes_arrays({**PLANTED, "planted_norm": 20.0})["test"]
    base = S.shapes_arrays(SMALL)["test"][0]
    assert x.min() >= 0 and x.max() <= 1
    norms = np.linalg.norm((x - base).reshape(len(x), -1), axis=1)
    assert np.all(norms <= 20.0 + 1e-3) and np.all(norms > 10.0)


def test_rate_and_correlation_of_the_stored_patterns(planted_arrays) -> None:
    x_clean = planted_arrays["test_clean"][0]
    for split in ("train", "test", "test_shuffled"):
        x, _, pattern = planted_arrays[split]
        carriers = pattern >= 0
        base = x_clean if split != "train" else S.shapes_arrays(SMALL)["train"][0]
        moved = np.abs(x - base).reshape(len(x), -1).max(axis=1) > 0
        # The `pattern` field says exactly which images carry which pattern.
        np.testing.assert_array_equal(moved, carriers)
    np.testing.assert_array_equal(planted_arrays["test_clean"][2], -1)
    # The shuffled split: same images, same carriers, other patterns.
    _, y_te, p_te = planted_arrays["test"]
    _, y_sh, p_sh = planted_arrays["test_shuffled"]
    np.testing.assert_array_equal(y_te, y_sh)
    np.testing.assert_array_equal(p_te >= 0, p_sh >= 0)


def _chi2_threshold(dof: int, p: float) -> float:
    from scipy.stats import chi2

    return float(chi2.isf(p, dof))


@pytest.mark.parametrize(("rate", "corr"), [(1.0, 1.0), (0.7, 0.6), (0.3, 0.0), (0.0, 1.0)])
def test_pattern_assignment_statistics(rate: float, corr: float) -> None:
    """The carried patterns follow the configured rate and correlation, and the shuffled
    ones are independent of the labels.

    n = 200 000 labels; every tolerance is 5 binomial standard deviations, so each check
    fails by chance with probability < 1e-6 (for any seed): the rate within
    5·sqrt(r(1-r)/n) <= 0.0056, the match probability c + (1-c)/10 within
    5·sqrt(p(1-p)/carriers) <= 0.0056/sqrt(rate). Independence: a chi-square test of the
    10×10 (label, pattern) table at p = 1e-6.
    """
    n, k = 200_000, S.NUM_CLASSES
    labels = np.random.default_rng(0).permutation(np.arange(n) % k)
    params = S.shapes_params({"planted": True, "planted_rate": rate, "planted_correlation": corr})
    assigned, shuffled = S.pattern_assignment(params, "train", labels)
    carriers = assigned >= 0
    np.testing.assert_array_equal(carriers, shuffled >= 0)
    assert abs(carriers.mean() - rate) <= 5 * math.sqrt(rate * (1 - rate) / n) + 1e-12
    m = int(carriers.sum())
    if m == 0:
        return
    p_match = corr + (1 - corr) / k
    match = (assigned[carriers] == labels[carriers]).mean()
    assert abs(match - p_match) <= 5 * math.sqrt(p_match * (1 - p_match) / m) + 1e-12
    # Non-matching patterns are spread uniformly over the other classes: each class's
    # share of the mismatches is 1/9 (checked by chi-square, goodness of fit).
    wrong = carriers & (assigned != labels)
    if corr < 1:
        offset = (assigned[wrong] - labels[wrong]) % k  # 1..9
        counts = np.bincount(offset, minlength=k)[1:]
        expected = wrong.sum() / (k - 1)
        stat = ((counts - expected) ** 2 / expected).sum()
        assert stat < _chi2_threshold(k - 2, 1e-6)
    # Shuffled: independent of the label.
    table = np.zeros((k, k))
    np.add.at(table, (labels[carriers], shuffled[carriers]), 1)
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
    stat = ((table - expected) ** 2 / expected).sum()
    assert stat < _chi2_threshold((k - 1) ** 2, 1e-6)
    # ... and uniform over the classes.
    marginal = table.sum(0)
    assert ((marginal - m / k) ** 2 / (m / k)).sum() < _chi2_threshold(k - 1, 1e-6)


# --- tfds, registry, loaders --------------------------------------------------------------


def test_registry_entry() -> None:
    info = jd.get_info("shapes")
    assert info.image_shape == (32, 32, 3) and info.num_classes == 10
    assert info.offline and not info.augment and not info.flip
    assert set(info.kwargs) == {f for f in S.ShapesParams.__dataclass_fields__}


def test_prepared_with_array_record_and_read_via_load_split(data_dir: Path) -> None:
    kwargs = {**PLANTED, "planted_rate": 0.7, "planted_correlation": 0.6}
    assert not jd.is_prepared("shapes", data_dir, dataset_kwargs=kwargs)
    path = jd.prepare("shapes", data_dir, dataset_kwargs=kwargs)
    assert jd.is_prepared("shapes", data_dir, dataset_kwargs=kwargs)
    name = S.config_name(S.shapes_params(kwargs))
    assert path == data_dir / "shapes" / name / "1.0.0"
    files = sorted(p.name for p in path.iterdir())
    assert any(f.startswith("shapes-test_shuffled.array_record") for f in files), files
    expected = S.shapes_arrays(kwargs)
    for split, (x_ref, y_ref, p_ref) in expected.items():
        x, y = jd.load_split("shapes", split, data_dir=data_dir, dataset_kwargs=kwargs)
        assert x.dtype == np.float32 and y.dtype == np.int32
        np.testing.assert_array_equal(x, x_ref)
        np.testing.assert_array_equal(y, y_ref)
        source = jd.data_source("shapes", split, data_dir, dataset_kwargs=kwargs)
        assert [int(source[i]["pattern"]) for i in range(0, len(source), 37)] == list(p_ref[::37])
    # Other parameters: another folder, not prepared, never the data above.
    other = {**kwargs, "planted_norm": 0.25}
    assert not jd.is_prepared("shapes", data_dir, dataset_kwargs=other)
    assert not jd.is_prepared("shapes", data_dir, dataset_kwargs=SMALL)
    # The loaders read it like any other dataset.
    batch = next(
        iter(
            jd.make_loader(
                "shapes",
                "train",
                batch_size=16,
                seed=0,
                data_dir=data_dir,
                dataset_kwargs=kwargs,
            )
        )
    )
    assert batch["image"].shape == (16, 32, 32, 3) and batch["label"].shape == (16,)


def test_plain_shapes_has_no_shuffled_split(data_dir: Path) -> None:
    with pytest.raises(DatasetError, match=r"no split 'test_shuffled'.*train, test"):
        jd.load_split("shapes", "test_shuffled", data_dir=data_dir, dataset_kwargs=SMALL)
    with pytest.raises(DatasetError, match=r"takes no dataset_kwargs"):
        jd.load_split("digits", "test", data_dir=data_dir, dataset_kwargs={"seed": 1})


def test_registered_with_tfds(data_dir: Path) -> None:
    import tensorflow_datasets as tfds

    builder = tfds.builder("shapes", data_dir=os.fspath(data_dir))  # the default config
    assert isinstance(builder, jd.ShapesBuilder)
    assert builder.builder_config.name == "seed0"
    assert builder.info.features["label"].names == list(S.CLASS_NAMES)
    assert S.ShapesBuilder.for_params(S.ShapesParams()).builder_config.name == "seed0"


@pytest.mark.parametrize("model", ["mlp", "small_cnn", "madry_cnn", "preact_resnet18"])
def test_models_fit_shapes(model: str) -> None:
    """The registry's models take 32×32×3 inputs (shapes only: nothing is compiled)."""
    import jax

    from jaxrobust.models import create_model

    info = jd.get_info("shapes")
    m = create_model(model, info.num_classes, mean=info.mean, std=info.std)
    x = jax.ShapeDtypeStruct((4, *info.image_shape), np.float32)
    variables = jax.eval_shape(lambda x: m.init(jax.random.key(0), x), x)
    assert jax.eval_shape(m.apply, variables, x).shape == (4, 10)


# --- configs and the command line ---------------------------------------------------------


def test_config_dataset_kwargs(tmp_path: Path) -> None:
    from jaxrobust.cli import _default_out
    from jaxrobust.config import load_config
    from jaxrobust.errors import ConfigError
    from jaxrobust.train.loop import load_run_config

    cfg = load_config(
        "smoke",
        ["dataset=shapes", "dataset_kwargs.planted=True", "dataset_kwargs.planted_norm=0.25"],
    )
    assert cfg.dataset_kwargs.to_dict() == {"planted": True, "planted_norm": 0.25}
    assert "planted" in str(_default_out(cfg))
    assert load_config("smoke").dataset_kwargs.to_dict() == {}
    assert str(_default_out(load_config("smoke"))).startswith("runs/digits_")
    cfg2 = load_config("smoke", ['dataset_kwargs={"planted": True, "seed": 2}'])
    assert cfg2.dataset_kwargs.to_dict() == {"planted": True, "seed": 2}
    # A JSON config file and a run's config.json round-trip it.
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"dataset": "shapes", "dataset_kwargs": {"planted": True}}))
    assert load_config(os.fspath(f)).dataset_kwargs.to_dict() == {"planted": True}
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_dict()))
    assert load_run_config(tmp_path).dataset_kwargs.to_dict() == cfg.dataset_kwargs.to_dict()
    with pytest.raises(ConfigError, match="dataset_kwargs"):
        load_config("smoke", ["dataset_kwargs=3"])


def test_cli_refuses_bad_dataset_kwargs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from jaxrobust.cli import main

    out = tmp_path / "run"
    argv = ["train", "--config", "smoke", "--quiet", "--out", os.fspath(out)]
    assert main([*argv, "--set", "dataset=shapes", "--set", "dataset_kwargs.planted_norm=-1"]) == 2
    assert "planted_norm" in capsys.readouterr().err
    assert main([*argv, "--set", "dataset_kwargs.planted=True"]) == 2
    assert "'digits' takes no dataset_kwargs" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow
def test_cli_train_eval_attack_on_planted_shapes(tmp_path: Path) -> None:
    from jaxrobust.cli import main

    data = tmp_path / "data"
    out = tmp_path / "run"
    kw = ["dataset_kwargs.planted=True", "dataset_kwargs.num_train=512"]
    kw += ["dataset_kwargs.num_test=128", f"data_dir={data}", "dataset=shapes", "epochs=1"]
    sets = [a for k in kw for a in ("--set", k)]
    assert main(["train", "--config", "smoke", "--quiet", "--out", os.fspath(out), *sets]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dataset"] == "shapes"
    assert metrics["dataset_kwargs"] == {"planted": True, "num_train": 512, "num_test": 128}
    assert main(["eval", os.fspath(out), "--suite", "fast", "--limit", "32"]) == 0
    ev = out / "eval_shuffled"
    args = ["--split", "test_shuffled", "--out", os.fspath(ev)]
    assert main(["eval", os.fspath(out), "--suite", "fast", "--limit", "32", *args]) == 0
    assert json.loads((ev / "metrics.json").read_text())["split"] == "test_shuffled"
    assert main(["attack", os.fspath(out), "--num", "4", "--steps", "3"]) == 0
    assert (out / "attack" / "adversarial_examples.png").is_file()


@pytest.mark.slow
def test_full_size_dataset(tmp_path: Path) -> None:
    """The default 20 000 / 5 000 images prepare (in seconds: ~20 s on 2 busy cores)."""
    import time

    t0 = time.perf_counter()
    jd.prepare("shapes", tmp_path)
    seconds = time.perf_counter() - t0
    x, y = jd.load_split("shapes", "test", data_dir=tmp_path)
    assert x.shape == (5000, 32, 32, 3)
    np.testing.assert_array_equal(np.bincount(y), 500)
    assert len(jd.data_source("shapes", "train", tmp_path)) == 20_000
    assert seconds < 120, seconds
