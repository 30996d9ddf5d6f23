"""The sweep report's PNG plots (matplotlib, Agg backend): metrics against NFE, lambda_k per evaluation k,
and sample grids (base | D-ODE | teacher, same seeds)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

GRID_TILES = 4  # sample grids show GRID_TILES x GRID_TILES samples per panel


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display needed), imported when first plotting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_metrics(rows: list[dict[str, Any]], out: Path) -> list[Path]:
    """One PNG per metric: value against NFE per solver (base dashed, D-ODE solid, teacher dotted)."""
    plt = pyplot()
    paths = []
    for metric in dict.fromkeys(r["metric"] for r in rows):
        sel = [r for r in rows if r["metric"] == metric]
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for i, solver in enumerate(dict.fromkeys(r["solver"] for r in sel)):
            pts = sorted((r["nfe"], r["base"], r["dode"]) for r in sel if r["solver"] == solver)
            color = f"C{i}"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "--o", color=color, ms=3, alpha=0.6)
            ax.plot([p[0] for p in pts], [p[2] for p in pts], "-o", color=color, ms=4, label=solver)
        teacher = next((r["teacher"] for r in sel if r["teacher"] is not None), None)
        if teacher is not None:
            ax.axhline(teacher, color="k", ls=":", label="teacher")
        values = [v for r in sel for v in (r["base"], r["dode"]) if v is not None]
        if values and min(values) > 0:
            ax.set_yscale("log")
        ax.set_xlabel("NFE")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_ylabel(sel[0]["label"])
        ax.set_title(f"{sel[0]['label']}: base (dashed) vs D-ODE (solid)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        paths.append(out / f"metric-{metric}.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


def plot_lambdas(lambdas: dict[str, dict[int, list[float]]], out: Path) -> Path:
    """lambda_k against evaluation k: one panel per solver, one line per NFE."""
    plt = pyplot()
    cols = min(3, len(lambdas))
    rows = -(-len(lambdas) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.8 * rows), squeeze=False, sharey=True)
    for ax in axes.flat[len(lambdas):]:
        ax.set_visible(False)
    for ax, (solver, by_nfe) in zip(axes.flat, lambdas.items()):
        for nfe, values in sorted(by_nfe.items()):
            ax.plot(range(len(values)), values, "-o", ms=3, label=f"NFE {nfe}")
        ax.axhline(0, color="k", lw=0.5)
        ax.set_title(solver)
        ax.set_xlabel("evaluation k")
        ax.legend(fontsize=6)
    for row in axes:
        row[0].set_ylabel("λ_k")
    fig.tight_layout()
    path = out / "lambdas.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def mosaic(images: np.ndarray) -> np.ndarray:
    """The first GRID_TILES^2 uint8 images (B, C, H, W) tiled into one (H', W') or (H', W', 3) array."""
    n = GRID_TILES
    tiles = images[: n * n]
    tiles = np.concatenate([tiles, np.zeros((n * n - len(tiles), *tiles.shape[1:]), np.uint8)])
    c, h, w = tiles.shape[1:]
    grid = tiles.reshape(n, n, c, h, w).transpose(0, 3, 1, 4, 2).reshape(n * h, n * w, c)
    return grid[..., 0] if c == 1 else grid


def plot_samples(panels: dict[str, dict[str, np.ndarray]], out: Path) -> Path:
    """Rows: solvers; columns: base | D-ODE | teacher sample grids (same seeds)."""
    plt = pyplot()
    columns = ["base", "D-ODE", "teacher"]
    fig, axes = plt.subplots(len(panels), 3, figsize=(6.0, 2.1 * len(panels)), squeeze=False)
    for row, (title, images) in zip(axes, panels.items()):
        for ax, col in zip(row, columns):
            ax.imshow(mosaic(images[col]), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{title} {col}" if col != "teacher" else "teacher", fontsize=8)
    fig.tight_layout()
    path = out / "samples.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
