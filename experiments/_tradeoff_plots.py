"""Figures of the trade-off experiment (not an experiment: the leading `_` keeps it out of
`jaxrobust experiment`'s list). Each function reads the experiment's JSON dict, so a figure
can be redrawn from a committed result without re-running anything."""

from __future__ import annotations

from pathlib import Path

import _common as C  # experiments/ is on sys.path (script dir, or added by the CLI)
import _plots as P
import _tradeoff_model as M
import numpy as np
from matplotlib.lines import Line2D

from jaxrobust import report

MARKERS = "osD^vP*Xh"


def _value(x):
    return x["value"] if isinstance(x, dict) else x


def plot_bound(data: dict, path: Path) -> Path:
    """Left: standard vs robust accuracy (ε = 2η) of every model, closed form (filled) and
    measured on test samples (hollow, ± 2 SE), against the bound p(1 − A)/(1 − p) and the
    Bayes → x₁-only blend. Right: measured robust accuracy minus the bound at the measured
    standard accuracy, per model (± 2 SE): no model may sit above 0."""
    s, models = data["settings"], data["models"]
    p, eps = s["p"], s["eps_attack"]
    fig, axes = C.figure(1, 2, (5.6, 4.6))
    ax, ax_gap = axes[0]
    std_all = [_value(r["standard_accuracy"]) for r in models]
    grid = np.linspace(min(0.9, min(std_all) - 0.01), 1.0, 400)
    ax.plot(grid, M.bound(grid, p), "k-", lw=1.2, label="bound p(1 − A)/(1 − p)")
    ax.fill_between(grid, M.bound(grid, p), 1.02, color="0.9", label="impossible (theorem)")
    blend = data["blend"]
    ax.plot(
        _value(blend["standard_accuracy"]),
        _value(blend["robust_accuracy"]),
        "-",
        color="0.5",
        lw=1,
        label="Bayes → x₁-only blend (closed form)",
    )
    n = len(models)
    for i, r in enumerate(models):
        mk, col, size = MARKERS[i % len(MARKERS)], f"C{i}", 11 - 5 * i / max(n - 1, 1)
        # Overlapping points stay visible: each model its own marker, sizes shrinking.
        ax.plot(
            _value(r["standard_accuracy"]),
            _value(r["robust_accuracy"]),
            mk,
            color=col,
            ms=size,
            label=r["name"],
        )
        st, rb = r["standard_accuracy_test"], r["robust_accuracy_pgd"]
        ax.errorbar(
            st["value"],
            rb["value"],
            xerr=2 * st["se"],
            yerr=2 * rb["se"],
            fmt=mk,
            mfc="none",
            color=col,
            ms=size + 3,
            capsize=2,
        )
    handles, labels = ax.get_legend_handles_labels()
    handles += [
        Line2D([], [], marker="o", color="k", ls="none", label="filled: closed form"),
        Line2D([], [], marker="o", mfc="none", color="k", ls="none", label="hollow: measured"),
    ]
    labels += ["filled: closed form", f"hollow: measured (PGD, {s['test_size']} test, ± 2 SE)"]
    ax.set_xlim(grid[0], 1.0)
    P.style(
        ax,
        "standard accuracy A",
        f"ℓ∞ robust accuracy at ε = 2η = {eps:.3f}",
        f"d = {s['d']}, p = {p}, η = 3/√d",
        ylim=P.UNIT,
        legend=False,
    )
    ax.legend(handles, labels, fontsize=6.5, loc="center left")

    xs = np.arange(n)
    for i, r in enumerate(models):
        g = r["bound_check"]["robust_minus_bound"]
        cf = _value(r["robust_accuracy"]) - _value(r["bound_closed_form"])
        mk = MARKERS[i % len(MARKERS)]
        ax_gap.errorbar(
            i, g["value"], 2 * g["se"], fmt=mk, mfc="none", color=f"C{i}", ms=8, capsize=3
        )
        ax_gap.plot(i, cf, mk, color=f"C{i}", ms=5)
    ax_gap.axhline(0, color="k", lw=1.2, label="bound (above: impossible)")
    ax_gap.axhspan(0, 2.0, color="0.9")
    ax_gap.set_xticks(xs, [r["name"].replace("PGD-AT ", "AT ") for r in models], rotation=35)
    ends = [
        v
        for r in models
        for g in [r["bound_check"]["robust_minus_bound"]]
        for v in (g["value"] - 2 * g["se"], g["value"] + 2 * g["se"])
    ]
    P.style(
        ax_gap,
        "",
        "robust accuracy − bound",
        "measured (hollow, ± 2 SE) and closed form (filled)",
        ylim=(min(ends) - 0.05, max(max(ends), 0.0) + 0.05),
        loc="lower right",
    )
    return C.save(fig, path)


def plot_weights(data: dict, path: Path) -> Path:
    """The weight share of the robust feature x₁ and the weights' sizes, per model."""
    models = data["models"]
    names = [r["name"].replace("PGD-AT ", "AT ") for r in models]
    fig, axes = C.figure(1, 2, (5.0, 3.8))
    xs = np.arange(len(models))
    axes[0, 0].bar(xs, [r["x1_share_of_l1"] for r in models], color=[f"C{i}" for i in xs])
    axes[0, 0].set_ylabel("|v₁| / ‖v‖₁ (weight share of x₁)")
    axes[0, 1].bar(xs - 0.2, [r["v1"] for r in models], 0.4, label="v₁ (robust feature)")
    axes[0, 1].bar(xs + 0.2, [r["weak_l1"] for r in models], 0.4, label="Σ|vᵢ| (weak features)")
    axes[0, 1].set_ylabel("weight")
    axes[0, 1].legend(fontsize=7)
    for ax in axes[0]:
        ax.set_xticks(xs, names, rotation=30, fontsize=7)
        ax.grid(True, axis="y", alpha=0.3)
    return C.save(fig, path)


def plot_accuracy_vs_eps(data: dict, path: Path) -> Path:
    """Closed-form ℓ∞ robust accuracy of every model against the attack ε (in units of η)."""
    a = data["accuracy_vs_eps"]
    eta = data["settings"]["eta"]
    curves = np.asarray(_value(a["accuracy"]))
    eps = np.asarray(a["eps"]) / eta
    return report.plot_accuracy_vs_eps(
        {name: (eps, curves[i]) for i, name in enumerate(a["names"])},
        path,
        title="closed-form ℓ∞ robust accuracy",
        xlabel="attack ε / η",
    )


def plot_digits(data: dict, path: Path) -> Path:
    """2x2: clean accuracy vs ε_train (zoomed: the changes are a few pp), robust accuracy at
    ε_train, accuracy vs attack ε per model, low-data clean accuracy vs n; mean ± SE over
    training seeds."""
    fig, axes = C.figure(2, 2, (5.2, 3.8))
    sw = data["eps_sweep"]
    e = np.asarray(sw["eps_train"])
    clean, own = sw["clean_test"], sw["robust_test_at_eps_train"]
    seeds = clean["n"]
    ax = axes[0, 0]
    P.errorbars(ax, e, clean["value"], clean["se"], "k-o", "PGD-AT")
    ax.axhline(clean["value"][0], color="0.5", ls=":", lw=1, label="standard (ε_train = 0)")
    P.style(
        ax,
        "ε_train (ℓ∞, pixels in [0, 1])",
        "clean test accuracy",
        f"clean accuracy, full training set ({seeds} seeds, ± SE)",
    )
    ax = axes[0, 1]
    P.errorbars(ax, e, own["value"], own["se"], "C3-s", "PGD-AT, at ε = ε_train")
    curves = np.asarray(sw["accuracy_vs_attack_eps"]["value"])
    ax.plot(e, curves[0], "k:o", ms=3, label="standard")
    P.style(
        ax,
        "ε_train = attack ε",
        "robust test accuracy (PGD)",
        "robust accuracy at the training ε",
        ylim=P.UNIT,
    )
    ax = axes[1, 0]
    for i, et in enumerate(e):
        name = "standard" if et == 0 else f"PGD-AT ε={et:g}"
        ax.plot(sw["attack_eps"], curves[i], "-o", ms=3, color=f"C{i}", label=name)
    P.style(
        ax,
        "attack ε (PGD ℓ∞)",
        "test accuracy",
        "accuracy vs attack ε (seed mean)",
        ylim=P.UNIT,
        legend_size=6,
    )
    ax = axes[1, 1]
    low = data["low_data"]
    lc = low["clean_test"]
    for i, et in enumerate(low["eps_train"]):
        name = "standard" if et == 0 else f"PGD-AT ε={et:g}"
        color = "k" if et == 0 else f"C{i}"
        P.errorbars(
            ax, low["n"], np.asarray(lc["value"])[i], np.asarray(lc["se"])[i], "-o", name, color
        )
    P.style(
        ax,
        "training samples n (class-balanced, nested)",
        "clean test accuracy",
        f"low data (paired, {lc['n']} seeds, ± SE)",
        logx=True,
    )
    ax.set_xticks(low["n"], [str(n) for n in low["n"]])
    ax.minorticks_off()
    return C.save(fig, path)


def plot_saliency(data: dict, path: Path) -> Path:
    """Test images (one per class) and −∇ₓ loss of models trained at each saliency ε."""
    ex = data["saliency"]["examples"]
    images, grads = np.asarray(ex["images"]), np.asarray(ex["gradients"])
    k = images.shape[0]
    fig, axes = C.figure(1 + grads.shape[0], k, (1.1, 1.2))
    for j in range(k):
        axes[0, j].imshow(images[j], cmap="gray_r", vmin=0, vmax=1)
        axes[0, j].set_title(f"y={int(ex['labels'][j])}", fontsize=8)
        for r in range(grads.shape[0]):
            g = -grads[r, j]  # the loss-decreasing direction: "more of the true class"
            m = max(float(np.abs(g).max()), 1e-30)
            axes[r + 1, j].imshow(g, cmap="RdBu_r", vmin=-m, vmax=m)
    sal = data["saliency"]
    eps_all = list(sal["eps_train"])
    for r, et in enumerate(ex["eps_train"]):
        i = eps_all.index(et)
        corr = np.asarray(_value(sal["measures"]["abs_grad_vs_image"]))[i]
        eff = np.asarray(_value(sal["measures"]["effective_pixels"]))[i]
        name = "standard" if et == 0 else f"AT ε={et:g}"
        axes[r + 1, 0].set_ylabel(f"{name}\nρ={corr:.2f}\n{eff:.0f} px", fontsize=7)
    axes[0, 0].set_ylabel("image", fontsize=7)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(
        "−∇ₓ CE(f(x), y), red +, blue − (ρ: corr(|∇|, x); px: effective pixels (‖∇‖₁/‖∇‖₂)²;"
        " test-set means)",
        fontsize=9,
    )
    return C.save(fig, path)
