"""Plotting helpers shared by the experiments (not an experiment: the leading `_` keeps it out
of `jaxrobust experiment`'s list). Figures come from `_common.figure` / `_common.save`; these
draw the recurring pieces the same way everywhere: estimates with error bars, axes styling,
legend entries for marker conventions."""

from __future__ import annotations

from typing import Any

import numpy as np

Z95 = 1.959964  # two-sided 95% normal quantile
UNIT = (-0.02, 1.02)  # y-limits of an accuracy or error in [0, 1], its ends left visible


def errorbars(
    ax,
    x: Any,
    mean: Any,
    se: Any | None,
    fmt: str,
    label: str | None,
    color: str | None = None,
    *,
    z: float = 1.0,
    **kw,
):
    """Plot an estimate with ±z·SE bars (no bars when se is None); returns the container."""
    yerr = None if se is None else z * np.asarray(se, float)
    return ax.errorbar(
        np.asarray(x),
        np.asarray(mean, float),
        yerr=yerr,
        fmt=fmt,
        color=color,
        ms=kw.pop("ms", 3),
        capsize=kw.pop("capsize", 2),
        label=label,
        **kw,
    )


def style(
    ax,
    xlabel: str,
    ylabel: str,
    title: str,
    *,
    logx: bool = False,
    logy: bool = False,
    ylim: tuple[float, float] | None = None,
    legend_size: float = 7,
    legend: bool = True,
    title_size: float = 9,
    **legend_kw,
) -> None:
    """Labels, title, log axes, grid and legend in one call."""
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=title_size)
    ax.grid(True, which="both", alpha=0.3)
    if legend:
        ax.legend(fontsize=legend_size, **legend_kw)


def style_vs_n(ax, ylabel: str, title: str, *, xlabel: str = "training samples n", **kw) -> None:
    """`style` for a [0, 1] quantity against a sample count: log x, `UNIT` y-limits, small
    legend (the sample-complexity panels all share this look)."""
    kw = {"logx": True, "ylim": UNIT, "legend_size": 6, **kw}
    style(ax, xlabel, ylabel, title, **kw)


def legend_entry(ax, fmt: str, label: str, **kw) -> None:
    """A legend entry for a marker or line convention that has no plotted series of its own
    (e.g. "hollow: outside the fitted regime")."""
    ax.plot([], [], fmt, label=label, **kw)
