"""The figures of `jaxrobust experiment sample_complexity` (helper module): each reads alone,
with a legend entry for every line and marker, error bars on every estimate, and the method
of every number in its labels (closed form, measured by which attack, on how many samples)."""

from __future__ import annotations

from pathlib import Path

import _common as C  # experiments/ is on sys.path (script dir, or added by the CLI)
import _plots as P
import numpy as np


def _v(x):
    """The value of a provenance dict (or x itself)."""
    return x["value"] if isinstance(x, dict) and "value" in x else x


def plot_curves(curves: list[dict], meas: dict, head: dict | None, path: Path) -> None:
    """Gaussian model: closed-form error curves vs n per d, with the PGD measurements."""
    fig, axes = C.figure(1, len(curves), (4.8, 4.2))
    for ax, c in zip(axes[0], curves, strict=True):
        n = np.asarray(c["n"])
        ax.plot(n, c["standard"], "k-", lw=1.2, label="standard error (closed form)")
        for k, e in enumerate(c["eps"]):
            color = f"C{k}"
            ax.plot(
                n, np.asarray(c["robust"])[k], "-", color=color, lw=1.2, label=f"robust ε={e:g}"
            )
            pts = [r for r in meas["points"] if r["d"] == c["d"] and r["eps"] == e]
            if pts:
                P.errorbars(
                    ax,
                    [r["n"] for r in pts],
                    [r["robust"]["value"] for r in pts],
                    [r["robust"]["se"] for r in pts],
                    "o",
                    None,
                    color,
                    z=P.Z95,
                    mfc="none",
                    ms=5,
                )
        if head is not None and head["d"] == c["d"]:
            r = head["robust_measured"]
            P.errorbars(ax, [1], [r["value"]], [r["se"]], "k*", None, z=P.Z95, ms=8)
            P.legend_entry(ax, "k*", f"PGD at n=1, ε={head['eps']:g} (headline)", ms=8)
        P.legend_entry(
            ax, "ko", f"PGD, held-out samples: mean of {meas['draws']} ŵ draws ± 95% CI", mfc="none"
        )
        P.style_vs_n(
            ax,
            "error",
            f"d={c['d']:,}, σ={c['sigma']:.2f}; lines: closed form, mean of {c['draws']} ŵ",
            title_size=8,
        )
    C.save(fig, path)


def plot_nstar(nstar: dict, twins: list[dict], path: Path) -> None:
    """Integer n* vs ε²√d (all c), n* vs d (c = 0.5) and the measured error at n*."""
    fig, axes = C.figure(1, 3, (4.8, 4.3))
    table = np.asarray(nstar["n_star"], float)
    d = np.asarray(nstar["d"], float)
    theory = d >= nstar["d_theory_min"]
    markers = "os^D"
    ax = axes[0, 0]
    for b, m in enumerate(nstar["sigma_mults"]):
        for a, e in enumerate(nstar["eps"]):
            x = e**2 * np.sqrt(d)
            mk = markers[b % 4]
            ax.plot(x[theory], table[a, b, theory], mk, ms=4, color=f"C{a}")
            ax.plot(x[~theory], table[a, b, ~theory], mk, ms=4, color=f"C{a}", mfc="none")
        scale = np.outer(np.asarray(nstar["eps"]) ** 2, np.sqrt(d))
        xs = np.logspace(np.log10(scale.min()), np.log10(scale.max()), 50)
        ax.plot(xs, 2 / np.pi * m**2 * xs, "--", color="gray", lw=0.8)
        ax.text(xs[-1], 2 / np.pi * m**2 * xs[-1], f" c={m:g}", fontsize=7, va="center")
    for a, e in enumerate(nstar["eps"]):
        P.legend_entry(ax, "s", f"ε={e:g}", color=f"C{a}", ms=4)
    for b, m in enumerate(nstar["sigma_mults"]):
        P.legend_entry(ax, markers[b % 4], f"σ = {m:g}·d^¼", color="k", mfc="none", ms=4)
    P.legend_entry(ax, "o", f"filled: d ≥ {nstar['d_theory_min']}; hollow: smaller d", color="0.5")
    P.legend_entry(ax, "--", "(2/π)c²ε²√d (d → ∞, small ε)", color="gray", lw=0.8)
    P.style(
        ax,
        "ε²√d",
        f"n* (smallest integer n, robust error ≤ {nstar['target_robust_error']:.0%})",
        "n* vs ε²√d (closed form; n* = 1: one sample suffices)",
        logx=True,
        logy=True,
        legend_size=6,
        title_size=8,
    )
    ax = axes[0, 1]
    b = nstar["sigma_mults"].index(0.5) if 0.5 in nstar["sigma_mults"] else 0
    for a, e in enumerate(nstar["eps"]):
        ax.plot(d, table[a, b], "o-", ms=3, color=f"C{a}", label=f"ε={e:g}")
    top = table[-1, b, -1]
    ax.plot(d, np.sqrt(d) * top / np.sqrt(d[-1]), "k:", label="∝ √d")
    if (~theory).any():
        ax.axvspan(
            d.min(), nstar["d_theory_min"], color="0.92", zorder=0, label="n = ∞ floor near target"
        )
    P.style(
        ax,
        "dimension d",
        "n* (integer samples)",
        f"n* vs d (closed form, σ = {nstar['sigma_mults'][b]:g}·d^¼)",
        logx=True,
        logy=True,
        legend_size=6,
        title_size=8,
    )
    ax = axes[0, 2]
    if twins:
        dd = np.asarray([r["d"] for r in twins], float)
        ax.plot(
            dd, [_v(r["robust_closed_form"]) for r in twins], "k-o", ms=3, label="closed form at n*"
        )
        P.errorbars(
            ax,
            dd,
            [r["robust"]["value"] for r in twins],
            [r["robust"]["se"] for r in twins],
            "s",
            f"PGD on held-out samples ({twins[0]['draws']} ŵ draws) ± 95% CI",
            "C3",
            z=P.Z95,
            mfc="none",
            ms=5,
        )
        for r in twins:
            ax.annotate(
                f"n*={r['n']}",
                (r["d"], _v(r["robust_closed_form"])),
                fontsize=6,
                xytext=(3, 6),
                textcoords="offset points",
            )
        ax.axhline(nstar["target_robust_error"], color="gray", ls="--", lw=0.8, label="target")
        e0, c0 = twins[0]["eps"], twins[0]["sigma"] / twins[0]["d"] ** 0.25
        title = f"robust error of ŵ(n*), ε={e0:g}, c={c0:g}: measured vs closed form"
    else:
        title = "no measured twin at this size"
    P.style(ax, "dimension d", "robust error at n*", title, logx=True, legend_size=6, title_size=8)
    C.save(fig, path)


def plot_at(at: dict, path: Path) -> None:
    """Linear PGD-AT vs the mean estimator: errors vs n, and the paired robust difference."""
    fig, axes = C.figure(1, 2, (5.4, 4.2))
    n = np.asarray(at["n"])
    ax = axes[0, 0]
    me, adv = at["mean_estimator"], at["adversarial_training"]
    ax.plot(n, _v(me["standard"]), "k-", lw=1.2, label="ŵ = mean yx: standard")
    ax.plot(n, _v(me["robust"]), "C3-", lw=1.2, label="ŵ = mean yx: robust")
    ax.plot(n, _v(adv["standard"]), "k--", marker="^", ms=4, mfc="none", label="PGD-AT: standard")
    ax.plot(n, _v(adv["robust"]), "C3--", marker="^", ms=4, mfc="none", label="PGD-AT: robust")
    r = adv["robust_pgd"]
    P.errorbars(
        ax, n * 1.08, r["value"], r["se"], "s", "PGD-AT: robust, PGD on held-out (± SE)", "C0", ms=4
    )
    P.style_vs_n(
        ax,
        "error (lines: closed form, mean over seeds)",
        f"linear models, d={at['d']:,}, ε={at['eps']:g}, {at['seeds']} seeds",
    )
    ax = axes[0, 1]
    P.errorbars(
        ax,
        n,
        _v(at["robust_difference_at_minus_mean"]),
        at["robust_difference_se"],
        "C3-o",
        "robust error: PGD-AT − ŵ (paired, ± SE over seeds)",
    )
    ax.axhline(0, color="k", lw=0.8)
    P.style(
        ax,
        "training samples n",
        "difference in robust error",
        "does PGD-AT beat the mean estimator? (< 0: yes)",
        logx=True,
        legend_size=7,
    )
    C.save(fig, path)


def plot_bernoulli(bern: dict, path: Path) -> None:
    """Bernoulli model: linear vs thresholded classifier, one panel per ε."""
    eps = bern["eps"]
    fig, axes = C.figure(1, len(eps), (4.6, 4.0))
    n = np.asarray(bern["n"])
    std = bern["standard"]
    arg = bern["thresholded_robust_by_argument"]["value"]
    for k, (ax, e) in enumerate(zip(axes[0], eps, strict=True)):
        P.errorbars(ax, n, std["value"], std["se"], "k-", "standard error (both classifiers)")
        lin = bern["linear_robust"]
        P.errorbars(
            ax, n, lin["value"][k], lin["se"][k], "C0-", "linear: robust (exact worst case)"
        )
        thr, ex = bern["thresholded_robust"], bern["thresholded_robust_exact_search"]
        P.errorbars(
            ax,
            n,
            thr["value"][k],
            thr["se"][k],
            "C2s",
            "thresholded: robust, PGD + straight-through grad",
            ms=6,
            mfc="none",
        )
        ax.plot(n, ex["value"][k], "C2x", ms=5, label="thresholded: robust, exact search")
        if arg[k] is not None:
            ax.plot(
                n, arg[k], ":", color="C1", lw=2, label="thresholded: robust by argument (= std)"
            )
        control = bern["eps_is_control"][k]
        title = (
            f"ε={e:.2f} > 1 (control: signs can flip)"
            if control
            else f"ε={e:.3f} = {e / bern['tau']:.1f}τ"
        )
        P.style_vs_n(
            ax,
            f"error (mean of {bern['draws']} ŵ draws ± SE)",
            f"Bernoulli d={bern['d']}, τ={bern['tau']:.3f}: {title}",
            title_size=8,
        )
    C.save(fig, path)


def plot_distribution(ver, path: Path) -> None:
    fig, axes = C.figure(1, 1, (5.5, 4.0))
    ax = axes[0, 0]
    for i, v in enumerate(ver):
        for key, style in (("robust_error_exact", "-"), ("robust_error_samples", ":")):
            vals = np.asarray(v[key])
            ax.plot(
                vals,
                np.linspace(0, 1, len(vals)),
                style,
                color=f"C{i}",
                label=f"d={v['d']}, n={v['n']} ({'exact' if 'exact' in key else 'samples'})",
            )
    ax.set_xlabel(f"robust error of ŵ (ε={ver[0]['eps']:g})")
    ax.set_ylabel("empirical CDF over draws")
    ax.set_title("ŵ from samples vs exact N(θ*, σ²/n·I)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=6)
    C.save(fig, path)
