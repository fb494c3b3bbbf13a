"""A model zoo: robust and standard models that jaxrobust's own pipeline trained, shipped
inside the package, with the accuracies the zoo states and how each was measured.

    from jaxrobust import zoo

    zoo.list_models()                       # ['digits-mlp-pgd-at-linf0.1', ...]
    m = zoo.load("digits-mlp-pgd-at-linf0.1")
    logits = m.logits_fn(x)                 # x (B, 8, 8, 1) in [0, 1] -> (B, 10)
    m.metric("standard", eps=0.1)           # Measurement(value, se, n, attack, eps, ...)

A zoo entry is a run directory, the one `jaxrobust train` writes (config.json,
run_info.json, metrics.json, checkpoints/<step>/), reduced to one checkpoint whose optimizer
state is the fresh one of its config (zero Adam moments, which orbax stores in a few bytes),
plus `zoo.json`: the entry's name, provenance, stated metrics and the sha256 of every file.
So everything that reads a run reads an entry: `jaxrobust eval zoo:NAME`, `jr.load_run`.
Fine-tuning from an entry starts from that fresh optimizer state.

`load` accepts three forms:

* a name of the index that ships with the package (`list_models()`); its files are checked
  against the checksums in the index before anything is read;
* a local path: a run directory (any `jaxrobust train` output, or an unpacked entry, whose
  `zoo.json`, when present, gives the metrics and the checksums to verify);
* an http(s) URL of a `.tar.gz` archive (`pack` writes one) with its sha256, given as
  `sha256=` or as the URL's `#sha256=...` fragment: it is downloaded once (stdlib urllib)
  into the cache folder (`$JAXROBUST_ZOO_CACHE`, default `~/.cache/jaxrobust/zoo`),
  verified, and unpacked with tarfile's "data" filter (no links out, no absolute paths).

Loading never executes code: orbax array data and JSON only, no pickles. A damaged or
tampered entry raises `ZooError` naming the file whose checksum differs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import re
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from jaxrobust.errors import CheckpointError

__all__ = [
    "INDEX_PATH",
    "Measurement",
    "Resolved",
    "ZooError",
    "ZooModel",
    "cache_dir",
    "compare",
    "export",
    "file_checksums",
    "index",
    "list_models",
    "load",
    "pack",
    "resolve",
]

INDEX_PATH = Path(__file__).resolve().parent / "index.json"
"""The zoo's index: every shipped entry, its files' sha256 and its stated metrics."""

ENTRY_FILE = "zoo.json"
_FORMAT = "jaxrobust-zoo"
_VERSION = 1
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20


class ZooError(CheckpointError):
    """An unknown zoo name, a download that failed, or an entry whose files do not match
    their checksums (damaged or tampered)."""


class Measurement(NamedTuple):
    """One accuracy the zoo states, with how it was measured.

    Attributes:
      kind: "clean", "standard" (`jaxrobust eval`'s default suite: APGD-CE, APGD-T, FAB-T,
        Square, per-example worst case), "pgd-10" (`--attacks pgd-10`: PGD-10, one random
        start, cross-entropy) or "pgd-50x5" (the final evaluation of `jaxrobust train`:
        PGD-50 with 5 random restarts).
      value: the accuracy, a fraction in [0, 1].
      correct: how many of the `n` examples were classified correctly (under attack).
      n: number of examples (the test split of `dataset`).
      se: binomial standard error of `value`, `sqrt(value (1 - value) / n)`.
      attack: what broke the examples, in words.
      attacks: the attack names of `jaxrobust.attacks.ATTACKS` run in the cascade (empty for
        "clean" and "pgd-50x5").
      threat: "linf", "l2" or "l1".
      eps: the radius, in input units (images in [0, 1]); 0 for "clean".
      split: the dataset split.
      seed: the PRNG seed of the attacks' random starts.
      batch_size: the evaluation batch (padded), as `jaxrobust eval --batch-size`.
      checks: whether the evaluation ran its sanity checks.
      deterministic: whether the same command gives the same number again (fixed key and
        batch shapes; results do not depend on the device count).
      command: the command that measured it.
      commit: the git commit of jaxrobust that measured it.
    """

    kind: str
    value: float
    correct: int
    n: int
    se: float
    attack: str
    attacks: tuple[str, ...]
    threat: str
    eps: float
    split: str
    seed: int
    batch_size: int
    checks: bool
    deterministic: bool
    command: str
    commit: str | None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Measurement:
        fields = dict(d)
        fields["attacks"] = tuple(fields.get("attacks", ()))
        missing = [f for f in cls._fields if f not in fields]
        if missing:
            raise ZooError(f"a zoo measurement lacks {missing}: {dict(d)}")
        return cls(**{f: fields[f] for f in cls._fields})

    def to_dict(self) -> dict[str, Any]:
        out = self._asdict()
        out["attacks"] = list(self.attacks)
        return out

    def __str__(self) -> str:
        at = "clean" if self.kind == "clean" else f"{self.attack}, {self.threat} eps={self.eps:g}"
        return (
            f"{self.value:.4f} ± {self.se:.4f} (SE; {self.correct}/{self.n} {self.split} "
            f"examples, {at}, seed {self.seed})"
        )


class ZooModel(NamedTuple):
    """A loaded zoo model.

    Attributes:
      name: the zoo name (or the directory's name for a path without zoo.json).
      module: the Flax linen module (normalisation inside; inputs in [0, 1]).
      variables: its Flax variables (`{"params": ...}`, plus `"batch_stats"` if any).
      logits_fn: the model in inference mode, `x (B, H, W, C) in [0, 1] -> logits (B,
        classes)`, a pytree (`TrainState.logits_fn()`), so a jitted function that takes it
        compiles once per architecture.
      dataset: the dataset it was trained on (`jaxrobust.data.load_split(dataset, "test")`
        gives the examples the metrics were measured on).
      metrics: the accuracies the zoo states (empty for a plain run directory).
      description: one line on what it is.
      run_dir: the verified local run directory it was read from.
      config: the run's configuration (`ml_collections.ConfigDict`).
      step: the training step of its checkpoint.
      provenance: how it was trained (command, git commit, packages), from zoo.json or
        run_info.json.
    """

    name: str
    module: Any
    variables: dict[str, Any]
    logits_fn: Callable[[Any], Any]
    dataset: str
    metrics: tuple[Measurement, ...]
    description: str
    run_dir: Path
    config: Any
    step: int
    provenance: dict[str, Any]

    def metric(self, kind: str, eps: float | None = None) -> Measurement:
        """The stated measurement of `kind` ("clean", "standard", "pgd-10", "pgd-50x5") at
        `eps` (None: the only one of that kind, or the one at the training ε)."""
        return _pick(self.name, self.metrics, kind, eps, float(self.config.eps))


def _pick(
    name: str, metrics: tuple[Measurement, ...], kind: str, eps: float | None, train_eps: float
) -> Measurement:
    found = [m for m in metrics if m.kind == kind]
    if eps is not None:
        found = [m for m in found if math.isclose(m.eps, eps)]
    elif len(found) > 1:
        found = [m for m in found if math.isclose(m.eps, train_eps)] or found
    if not found:
        stated = ", ".join(sorted({f"{m.kind}@{m.eps:g}" for m in metrics})) or "none"
        raise ZooError(
            f"zoo model {name!r} states no {kind!r} accuracy"
            + (f" at eps={eps:g}" if eps is not None else "")
            + f"; it states: {stated}"
        )
    return found[0]


# --------------------------------------------------------------------------- the index


def index() -> dict[str, dict[str, Any]]:
    """The shipped index: zoo name -> entry (description, dataset, files' sha256, metrics,
    provenance), read fresh from `INDEX_PATH`."""
    try:
        data = json.loads(INDEX_PATH.read_text())
    except (OSError, ValueError) as e:
        raise ZooError(f"the zoo index {INDEX_PATH} is unreadable: {e}") from None
    if not isinstance(data, dict) or data.get("format") != _FORMAT + "-index":
        raise ZooError(f"{INDEX_PATH} is not a jaxrobust zoo index")
    models = data.get("models")
    if not isinstance(models, dict):
        raise ZooError(f"{INDEX_PATH} has no models")
    return models


def list_models() -> list[str]:
    """The names of the shipped zoo models, sorted (`index()` has their details)."""
    return sorted(index())


def cache_dir() -> Path:
    """Where downloaded entries go: `$JAXROBUST_ZOO_CACHE`, else `~/.cache/jaxrobust/zoo`."""
    env = os.environ.get("JAXROBUST_ZOO_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "jaxrobust" / "zoo"


# --------------------------------------------------------------------------- checksums


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def file_checksums(entry_dir: str | os.PathLike[str]) -> dict[str, str]:
    """sha256 of every file under `entry_dir` but zoo.json, by POSIX relative path."""
    root = Path(entry_dir)
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.relative_to(root).as_posix() != ENTRY_FILE:
            out[p.relative_to(root).as_posix()] = _sha256_file(p)
    return out


def _verify(entry_dir: Path, files: Mapping[str, str], what: str) -> None:
    """Raise ZooError unless `entry_dir` holds exactly `files` with these sha256 values."""
    if not isinstance(files, Mapping) or not files:
        raise ZooError(f"{what} lists no file checksums")
    found = file_checksums(entry_dir)
    missing = sorted(set(files) - set(found))
    if missing:
        raise ZooError(f"{what} is incomplete: {entry_dir / missing[0]} is missing")
    extra = sorted(set(found) - set(files))
    if extra:
        raise ZooError(f"{what} holds a file its checksums do not list: {entry_dir / extra[0]}")
    for rel, want in files.items():
        if found[rel] != want:
            raise ZooError(
                f"{what} is damaged or tampered with: {entry_dir / rel} has sha256 "
                f"{found[rel][:16]}..., the checksums say {str(want)[:16]}..."
            )


# --------------------------------------------------------------------------- resolving


class Resolved(NamedTuple):
    """A zoo model found and verified, not yet loaded (what `resolve` returns).

    Attributes:
      name: the zoo name (a plain run directory's folder name).
      run_dir: the local run directory (in the package, the given path or the cache).
      entry: the entry's index record or zoo.json (empty for a plain run directory).
    """

    name: str
    run_dir: Path
    entry: dict[str, Any]

    @property
    def metrics(self) -> tuple[Measurement, ...]:
        """The accuracies the zoo states for it."""
        return tuple(Measurement.from_dict(m) for m in self.entry.get("metrics", ()))

    def compare(
        self, eval_metrics: Mapping[str, Any], *, seed: int, batch_size: int, checks: bool
    ) -> list[str]:
        """Lines comparing a `jaxrobust eval` report (its metrics.json dict) with the stated
        measurements made with the same attacks, threat, split, examples, seed, batch size
        and checks: "reproduces" when the number of correct examples is the same."""
        return compare(self.name, self.metrics, eval_metrics, seed, batch_size, checks)


_Resolved = Resolved


def compare(
    name: str,
    stated: tuple[Measurement, ...],
    eval_metrics: Mapping[str, Any],
    seed: int,
    batch_size: int,
    checks: bool,
) -> list[str]:
    """See `Resolved.compare`."""
    m = eval_metrics
    n = int(m["num_examples"])
    attacks = tuple(m.get("attacks") or ())
    results = {0.0: float(m["clean_accuracy"])}
    results.update(
        {float(e): float(a) for e, a in zip(m["eps"], m["robust_accuracy"], strict=True) if e}
    )
    lines = []
    for s in stated:
        same_eval = (
            s.n == n
            and s.split == m.get("split")
            and s.seed == seed
            and s.batch_size == batch_size
            and s.checks == checks
        )
        if s.kind == "clean":
            same = same_eval  # the clean accuracy does not depend on the attacks
        else:
            same = same_eval and s.attacks == attacks and s.threat == m.get("threat")
        now = next((v for e, v in results.items() if math.isclose(e, s.eps)), None)
        if not same or now is None:
            continue
        correct = round(now * n)
        what = "clean accuracy" if s.kind == "clean" else f"robust accuracy at eps={s.eps:g}"
        if correct == s.correct:
            lines.append(f"zoo {name}: {what} {now:.4f} reproduces the zoo's stated {s}")
        else:
            lines.append(
                f"FLAG zoo {name}: {what} {now:.4f} ({correct}/{n}) differs from the zoo's "
                f"stated {s}"
            )
    if not lines and stated:
        lines.append(
            f"zoo {name}: the zoo states no measurement made with these flags; it states "
            + "; ".join(f"{s.kind} at eps={s.eps:g}: `{s.command}`" for s in stated)
        )
    return lines


def _is_url(ref: str) -> bool:
    return ref.startswith(("http://", "https://"))


def resolve(ref: str | os.PathLike[str], *, sha256: str | None = None) -> Resolved:
    """Find and verify a zoo model without loading it (what `jaxrobust eval zoo:REF` does).

    Args:
      ref: a zoo name, a local run directory or an http(s) URL, as for `load`.
      sha256: the archive's sha256 for an URL (or its `#sha256=` fragment).
    Returns:
      `Resolved(name, run_dir, entry)`.
    Raises:
      ZooError: as `load`.
    """
    return _resolve(ref, sha256)


def _resolve(ref: str | os.PathLike[str], sha256: str | None) -> _Resolved:
    text = os.fspath(ref)
    if isinstance(text, bytes) or not text:
        raise ZooError(f"a zoo model is a name, a path or an URL, got {ref!r}")
    if _is_url(text):
        return _from_url(text, sha256)
    path = Path(text)
    try:
        path = path.expanduser()
        exists = path.exists()
    except (OSError, ValueError, RuntimeError):  # NUL byte, too long, `~nosuchuser`
        exists = False
    try:
        models = index()
    except ZooError:
        if exists:  # a run directory needs no index
            return _from_path(path)
        raise
    if text in models:
        return _from_index(text, models[text])
    if exists:
        return _from_path(path)
    looks_like_path = os.sep in text or text.startswith(".")
    raise ZooError(
        (f"no such directory: {text}" if looks_like_path else f"unknown zoo model {text!r}")
        + f"; known models: {', '.join(sorted(models)) or 'none'} (or give a run directory "
        "or an http(s) URL of a packed entry)"
    )


def _from_index(name: str, entry: dict[str, Any]) -> _Resolved:
    if "url" in entry:  # a larger model kept outside the package
        resolved = _from_url(str(entry["url"]), entry.get("archive_sha256"))
        return resolved._replace(name=name)
    run_dir = INDEX_PATH.parent / str(entry.get("path", ""))
    if not (run_dir / "config.json").is_file():
        raise ZooError(f"zoo model {name!r}: its files are missing from {run_dir}")
    _verify(run_dir, entry.get("files", {}), f"zoo model {name!r} ({run_dir})")
    return _Resolved(name, run_dir, entry)


def _read_entry_file(run_dir: Path) -> dict[str, Any]:
    path = run_dir / ENTRY_FILE
    if not path.is_file():
        return {}
    try:
        entry = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ZooError(f"{path} is unreadable: {e}") from None
    if not isinstance(entry, dict) or entry.get("format") != _FORMAT:
        raise ZooError(f"{path} is not a jaxrobust zoo entry")
    return entry


def _from_path(path: Path) -> _Resolved:
    if not path.is_dir():
        raise ZooError(f"{path} is not a directory (a zoo entry or run directory)")
    if not (path / "config.json").is_file():
        raise ZooError(f"{path} is not a run directory (no config.json)")
    entry = _read_entry_file(path)
    if entry:
        _verify(path, entry.get("files", {}), f"zoo entry {path}")
    return _Resolved(str(entry.get("name") or path.resolve().name), path, entry)


def _split_url(url: str, sha256: str | None) -> tuple[str, str]:
    base, _, fragment = url.partition("#")
    given = fragment.removeprefix("sha256=") if fragment.startswith("sha256=") else None
    if sha256 is not None and given is not None and sha256.lower() != given.lower():
        raise ZooError(f"{url}: sha256={sha256} contradicts the URL's #sha256 fragment")
    digest = (sha256 or given or "").lower()
    if not _SHA256.match(digest):
        raise ZooError(
            f"{base}: an URL needs the archive's sha256 (64 hex digits), as "
            "load(url, sha256=...) or as the fragment #sha256=...; "
            f"got {digest or 'none'}"
        )
    return base, digest


def _urlopen(url: str, timeout: float) -> Any:
    """urllib's opener (a seam: tests replace it to simulate the network)."""
    return urllib.request.urlopen(url, timeout=timeout)


def _download(url: str, dest: Path, timeout: float = 60.0) -> str:
    """Stream `url` into `dest`; return its sha256."""
    h = hashlib.sha256()
    try:
        with _urlopen(url, timeout) as response, open(dest, "wb") as f:
            while chunk := response.read(_CHUNK):
                h.update(chunk)
                f.write(chunk)
    except (urllib.error.URLError, OSError, TimeoutError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise ZooError(
            f"could not download {url} ({reason}); offline? Download the archive elsewhere, "
            "unpack it and pass its directory to zoo.load (or `jaxrobust eval zoo:DIR`)"
        ) from None
    return h.hexdigest()


def _unpack(archive: Path, dest: Path) -> Path:
    """Unpack a .tar.gz (tarfile's "data" filter) into `dest`; return the run directory."""
    if not hasattr(tarfile, "data_filter"):  # Python < 3.11.4: no safe extraction filter
        raise ZooError(
            f"unpacking {archive} safely needs tarfile's 'data' filter (Python >= 3.11.4); "
            "unpack it yourself and pass its directory"
        )
    try:
        with tarfile.open(archive, "r:*") as tar:
            tar.extractall(dest, filter="data")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ZooError(f"{archive} is not a readable .tar.gz archive: {e}") from None
    if (dest / "config.json").is_file():
        return dest
    subdirs = [p for p in dest.iterdir() if p.is_dir()]
    if len(subdirs) == 1 and (subdirs[0] / "config.json").is_file():
        return subdirs[0]
    raise ZooError(f"the archive {archive} holds no run directory (no config.json)")


def _from_url(url: str, sha256: str | None) -> _Resolved:
    base, digest = _split_url(url, sha256)
    target = cache_dir() / digest
    if not target.is_dir():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".download-") as tmp:
            archive = Path(tmp) / "entry.tar.gz"
            got = _download(base, archive)
            if got != digest:
                raise ZooError(
                    f"{base}: the downloaded archive has sha256 {got}, expected {digest}: "
                    "damaged in transit or not the archive you meant; nothing was kept"
                )
            unpacked = Path(tmp) / "unpacked"
            unpacked.mkdir()
            _unpack(archive, unpacked)
            try:
                os.replace(unpacked, target)  # atomic: a concurrent download may have won
            except OSError:
                if not target.is_dir():
                    raise
    run_dir = target
    if not (run_dir / "config.json").is_file():
        subdirs = [p for p in run_dir.iterdir() if p.is_dir()]
        run_dir = subdirs[0] if len(subdirs) == 1 else run_dir
    resolved = _from_path(run_dir)
    return resolved


# --------------------------------------------------------------------------- loading


def load(ref: str | os.PathLike[str], *, sha256: str | None = None) -> ZooModel:
    """Load a zoo model: by name, from a run directory, or from an http(s) URL.

        m = zoo.load("digits-mlp-pgd-at-linf0.1")
        x, y = jaxrobust.data.load_split(m.dataset, "test")
        report = jaxrobust.evaluate(m.logits_fn, x, y, jax.random.key(0), eps=0.1)

    Args:
      ref: a name of `list_models()`, a local run directory (or unpacked entry), or the
        http(s) URL of a `.tar.gz` that `pack` wrote (downloaded once into `cache_dir()`).
      sha256: the archive's sha256 for an URL (or put `#sha256=...` in the URL); required
        for an URL, ignored otherwise.
    Returns:
      `ZooModel` (module, variables, logits_fn, dataset, stated metrics, ...).
    Raises:
      ZooError: an unknown name (the message lists the known ones), a missing directory, a
        failed download (offline: the message names the URL), a checksum that differs
        (damaged or tampered files).
      CheckpointError: a run directory without a readable checkpoint.
    """
    r = _resolve(ref, sha256)
    from jaxrobust.train.loop import restore_run

    run, state, _ = restore_run(r.run_dir)
    metrics = r.metrics
    provenance = r.entry.get("training") or _read_json(r.run_dir / "run_info.json")
    return ZooModel(
        name=r.name,
        module=run.model,
        variables=state.variables(),
        logits_fn=state.logits_fn(),
        dataset=str(run.cfg.dataset),
        metrics=metrics,
        description=str(r.entry.get("description", f"the run in {r.run_dir}")),
        run_dir=r.run_dir,
        config=run.cfg,
        step=int(state.step),
        provenance=provenance,
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        out = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return out if isinstance(out, dict) else {}


# --------------------------------------------------------------------------- writing


def export(
    run_dir: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    name: str,
    description: str,
    best: bool = False,
    metrics: list[Measurement] | tuple[Measurement, ...] = (),
) -> dict[str, Any]:
    """Write a zoo entry of a finished run: a run directory with one checkpoint, whose
    optimizer state is the fresh one of the run's config, and `zoo.json`.

    Args:
      run_dir: a directory `jaxrobust train` wrote.
      dest: the entry's directory (must not exist).
      name: the zoo name.
      description: one line on the model.
      best: export the run's best checkpoint instead of its latest.
      metrics: the measurements to state (`Measurement`s of the exported weights).
    Returns:
      The entry (zoo.json's content: name, provenance, metrics, files' sha256).
    Raises:
      ZooError: `dest` exists.
      CheckpointError: `run_dir` is not a run with a readable checkpoint.
    """
    from jaxrobust.checkpoint import Checkpointer
    from jaxrobust.train.loop import restore_run

    src, out = Path(run_dir), Path(dest)
    if out.exists():
        raise ZooError(f"{out} exists: export writes a new directory")
    run, state, metadata = restore_run(src, best=best)
    step = int(state.step)
    with Checkpointer(src / "checkpoints", keep=1) as ckpt:
        ckpt_metrics = ckpt.metrics(step)
    fresh = dataclasses.replace(state, opt_state=state.tx.init(state.params))
    out.mkdir(parents=True)
    for f in ("config.json", "run_info.json", "metrics.json"):
        if (src / f).is_file():
            shutil.copy2(src / f, out / f)
    with Checkpointer(out / "checkpoints", keep=1) as ckpt:
        ckpt.save(step, fresh, metadata=metadata, metrics=ckpt_metrics)
    info = _read_json(src / "run_info.json")
    entry = {
        "format": _FORMAT,
        "version": _VERSION,
        "name": name,
        "description": description,
        "dataset": str(run.cfg.dataset),
        "checkpoint_step": step,
        "optimizer_state": "fresh (tx.init(params)): the training run's moments are not kept",
        "training": {
            "command": " ".join(info.get("command", [])) or None,
            "git_commit": info.get("git_commit"),
            "packages": info.get("packages"),
            "started": info.get("started"),
        },
        "metrics": [m.to_dict() for m in metrics],
        "files": file_checksums(out),
    }
    (out / ENTRY_FILE).write_text(json.dumps(entry, indent=2) + "\n")
    return entry


def pack(entry_dir: str | os.PathLike[str], archive: str | os.PathLike[str]) -> str:
    """Write `entry_dir` as a .tar.gz (one top-level folder) for `load(URL, sha256=...)`;
    return the archive's sha256. Regular files and folders only."""
    src, dest = Path(entry_dir), Path(archive)
    if not (src / "config.json").is_file():
        raise ZooError(f"{src} is not a run directory (no config.json)")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for p in sorted(src.rglob("*")):
            if p.is_symlink() or not (p.is_file() or p.is_dir()):
                continue
            arcname = f"{src.name}/{p.relative_to(src).as_posix()}"
            tar.add(p, arcname=arcname, recursive=False)
    dest.write_bytes(buf.getvalue())
    return hashlib.sha256(buf.getvalue()).hexdigest()
