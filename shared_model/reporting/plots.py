"""Plots of a run report as inline SVG (text drawn as paths, so the page needs no font or any
other file) and image grids as PNG bytes. Matplotlib's object API only: no pyplot state."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image

Series = dict[str, tuple[list[float], list[float]]]


def figure_svg(fig: Figure) -> str:
    """The figure as an ``<svg>`` element (no XML prolog), text as paths."""
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    text = buffer.getvalue()
    return text[text.index("<svg"):]


def line_panels(panels: dict[str, Series], xlabel: str, log_y: bool = False) -> str:
    """One subplot per panel title, one line per series (e.g. a loss term per panel, a site per
    line); markers so that single points show. As SVG: :func:`line_panels_figure`."""
    return figure_svg(line_panels_figure(panels, xlabel, log_y))


def line_panels_figure(panels: dict[str, Series], xlabel: str, log_y: bool = False) -> Figure:
    """The figure of :func:`line_panels`. Its x values are rounds or steps: ticks only at
    integers (never a round 1.5)."""
    n = len(panels)
    columns = min(n, 3)
    rows = -(-n // columns)
    fig = Figure(figsize=(4.2 * columns, 3.0 * rows))
    for k, (title, series) in enumerate(panels.items(), 1):
        ax = fig.add_subplot(rows, columns, k)
        for label, (xs, ys) in series.items():
            ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.4, label=label)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if log_y and all(y > 0 for _, ys in series.values() for y in ys):
            ax.set_yscale("log")
        if 1 < len(series) <= 12:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def grouped_bars(xs: list[int], bars: dict[str, list[float]], xlabel: str, ylabel: str) -> str:
    """Grouped bars per x (e.g. MiB sent and received per round)."""
    fig = Figure(figsize=(max(4.0, 0.5 * len(xs) + 3), 3.0))
    ax = fig.add_subplot()
    width = 0.8 / max(len(bars), 1)
    for k, (label, values) in enumerate(bars.items()):
        ax.bar(np.arange(len(xs)) + k * width, values, width, label=label)
    ax.set_xticks(np.arange(len(xs)) + 0.4 - width / 2, [str(x) for x in xs])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return figure_svg(fig)


def image_grid_png(paths: list[Path], captions: list[str], columns: int = 8, tile: int = 96) -> bytes:
    """A PNG grid of the images, each resized to ``tile`` px with its caption underneath."""
    rows = -(-len(paths) // columns)
    fig = Figure(figsize=(columns * tile / 72, rows * (tile + 24) / 72), dpi=72)
    for k, (path, caption) in enumerate(zip(paths, captions), 1):
        ax = fig.add_subplot(rows, columns, k)
        with Image.open(path) as image:
            ax.imshow(np.asarray(image.convert("RGB").resize((tile, tile))))
        ax.set_title(caption[:18], fontsize=7)
        ax.axis("off")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()
