"""The sweep report's PNG plots (matplotlib, Agg backend): metrics against NFE, lambda_k per evaluation k
(D-ODE and each variant), the learned sigma grids against their start grids, and sample grids (base | D-ODE
| variants | teacher, same seeds)."""

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
    """One PNG per metric: value against NFE per solver (base dashed, D-ODE solid, each variant its own
    dash-dot style, teacher dotted)."""
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
            for j, name in enumerate(dict.fromkeys(v for r in sel for v in r.get("variants", {}))):
                var = sorted((r["nfe"], r["variants"][name]) for r in sel
                             if r["solver"] == solver and r["variants"].get(name) is not None)
                ax.plot([p[0] for p in var], [p[1] for p in var], ("-.^", ":s", "-.v")[j % 3], color=color, ms=4,
                        label=f"{solver} {name}" if var else None)
        teacher = next((r["teacher"] for r in sel if r["teacher"] is not None), None)
        if teacher is not None:
            ax.axhline(teacher, color="k", ls=":", label="teacher")
        values = [v for r in sel for v in (r["base"], r["dode"], *r.get("variants", {}).values()) if v is not None]
        if values and min(values) > 0:
            ax.set_yscale("log")
        ax.set_xlabel("network calls (NFE; an analytic first step is not one)")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_ylabel(sel[0]["label"])
        ax.set_title(f"{sel[0]['label']}: base (dashed), D-ODE (solid), variants (dash-dot)", fontsize=9)
        ax.legend(fontsize=8)
        paths.append(save(plt, fig, out / f"metric-{metric}.png"))
    return paths


def panel_axes(plt: Any, count: int, width: float = 3.6, height: float = 2.8) -> tuple[Any, Any]:
    """A figure with ``count`` panels, at most 3 per row (the spare ones hidden)."""
    cols = min(3, max(count, 1))
    rows = -(-max(count, 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.flat[count:]:
        ax.set_visible(False)
    return fig, axes


def save(plt: Any, fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_lambdas(lambdas: dict[str, dict[int, dict[str, list[float]]]], out: Path) -> Path:
    """lambda_k against evaluation k: one panel per solver, one colour per NFE, one line style per fit
    (D-ODE solid, the variants dashed/dotted); ``lambdas[solver][nfe][fit]`` are the values."""
    plt = pyplot()
    fig, axes = panel_axes(plt, len(lambdas))
    fits = list(dict.fromkeys(f for by in lambdas.values() for fs in by.values() for f in fs))
    styles = {f: ("-o", "--s", ":^", "-.v", "--x")[i % 5] for i, f in enumerate(fits)}
    for ax, (solver, by_nfe) in zip(axes.flat, lambdas.items()):
        for i, (nfe, by_fit) in enumerate(sorted(by_nfe.items())):
            for fit, values in by_fit.items():
                ax.plot(range(len(values)), values, styles[fit], color=f"C{i}", ms=3, label=f"NFE {nfe} {fit}")
        ax.axhline(0, color="k", lw=0.5)
        ax.set_title(solver)
        ax.set_xlabel("evaluation k")
        ax.set_ylabel("λ_k")
        ax.legend(fontsize=5)
    return save(plt, fig, out / "lambdas.png")


def plot_grids(grids: dict[str, dict[int, dict[str, tuple[list[float], list[float]]]]], out: Path) -> Path:
    """log sigma_i against step i of every learned grid beside its start grid (black, dotted): one panel per
    solver, one colour per NFE; ``grids[solver][nfe][fit] = (start sigmas, learned sigmas)``. The final
    sigma 0 is left out (log 0)."""
    plt = pyplot()
    fig, axes = panel_axes(plt, len(grids))
    for ax, (solver, by_nfe) in zip(axes.flat, grids.items()):
        for i, (nfe, by_fit) in enumerate(sorted(by_nfe.items())):
            start = next(iter(by_fit.values()))[0][:-1]
            ax.plot(range(len(start)), np.log(start), ":", color="k", lw=0.8)
            for j, (fit, (_, learned)) in enumerate(by_fit.items()):
                ax.plot(range(len(learned) - 1), np.log(learned[:-1]), ("-o", "--s", "-.^")[j % 3], color=f"C{i}",
                        ms=3, label=f"NFE {nfe} {fit}")
        ax.set_title(f"{solver}: learned vs start (dotted)")
        ax.set_xlabel("step i")
        ax.set_ylabel("log σ_i")
        ax.legend(fontsize=5)
    return save(plt, fig, out / "grids.png")


def mosaic(images: np.ndarray) -> np.ndarray:
    """The first GRID_TILES^2 uint8 images (B, C, H, W) tiled into one (H', W') or (H', W', 3) array."""
    n = GRID_TILES
    tiles = images[: n * n]
    tiles = np.concatenate([tiles, np.zeros((n * n - len(tiles), *tiles.shape[1:]), np.uint8)])
    c, h, w = tiles.shape[1:]
    grid = tiles.reshape(n, n, c, h, w).transpose(0, 3, 1, 4, 2).reshape(n * h, n * w, c)
    return grid[..., 0] if c == 1 else grid


def plot_samples(panels: dict[str, dict[str, np.ndarray]], out: Path, name: str = "samples.png") -> Path:
    """One row per panel (solver and NFE), one column per side: base | D-ODE | variants | teacher (same seeds)."""
    plt = pyplot()
    columns = list(dict.fromkeys(c for images in panels.values() for c in images))
    fig, axes = plt.subplots(len(panels), len(columns), figsize=(2.0 * len(columns), 2.1 * len(panels)), squeeze=False)
    for row, (title, images) in zip(axes, panels.items()):
        for ax, col in zip(row, columns):
            ax.set_xticks([])
            ax.set_yticks([])
            if col not in images:
                ax.set_visible(False)
                continue
            ax.imshow(mosaic(images[col]), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            ax.set_title(f"{title} {col}" if col != "teacher" else "teacher", fontsize=7)
    return save(plt, fig, out / name)
