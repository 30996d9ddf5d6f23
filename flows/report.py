"""The sweep's report: results tables in markdown and PNG plots (matplotlib, Agg), as a registry "report" artifact.

Plots: each metric against NFE (base dashed, D-ODE solid, teacher dotted), lambda_k per evaluation k
(one panel per solver), and sample grids at the smallest NFE (base | D-ODE | teacher, same seeds).
"""

from __future__ import annotations

import json
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import numpy as np
from prefect import task

from dode.generate import load_samples
from dode.store.lambdas import load_lambdas

from .common import CACHED, provenance
from .steps import log, open_registry

REPORT_FILE = "report.md"
GRID_TILES = 4  # sample grids show GRID_TILES x GRID_TILES samples per panel


def fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.4g}"


def markdown_tables(rows: list[dict[str, Any]]) -> str:
    """One table per metric: solver, NFE, base, D-ODE, teacher, change, guard scale."""
    out = []
    for label in dict.fromkeys(r["label"] for r in rows):
        out += [f"### {label}", "", "| solver | NFE | base | D-ODE | teacher | change | guard scale |",
                "|---|---:|---:|---:|---:|---:|---:|"]
        for r in (r for r in rows if r["label"] == label):
            change = "—" if r["change_pct"] is None else f"{r['change_pct']:+.1f} %"
            out.append(f"| {r['solver']} | {r['nfe']} | {fmt(r['base'])} | {fmt(r['dode'])} | {fmt(r['teacher'])} "
                       f"| {change} | {r['guard_scale']} |")
        out.append("")
    return "\n".join(out)


def plot_metrics(rows: list[dict[str, Any]], out: Path) -> list[Path]:
    """One PNG per metric: value against NFE per solver."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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


def render_report(registry: str, title: str, meta: dict, rows: list[dict], cells: list[dict], teacher_samples: str,
                  parents: list[str], *, provenance: dict | None = None) -> str:
    """Render the report (markdown + PNGs) and publish it as a "report" artifact; returns its id."""
    reg = open_registry(registry)
    lambdas: dict[str, dict[int, list[float]]] = {}
    for cell in cells:
        lambdas.setdefault(cell["solver"], {})[cell["nfe"]] = list(load_lambdas(reg, cell["lambdas"]).values)
    first = {}
    for cell in sorted(cells, key=lambda c: c["nfe"]):
        first.setdefault(cell["solver"], cell)
    teacher_images = load_samples(reg, teacher_samples)[: GRID_TILES**2]
    panels = {f"{s} NFE {c['nfe']}": {"base": load_samples(reg, c["base"])[: GRID_TILES**2],
                                     "D-ODE": load_samples(reg, c["dode"])[: GRID_TILES**2],
                                     "teacher": teacher_images} for s, c in first.items()}
    with TemporaryDirectory() as tmp:
        out = Path(tmp)
        pngs = [*plot_metrics(rows, out), plot_lambdas(lambdas, out), plot_samples(panels, out)]
        lines = [f"# {title}", ""] + [f"- **{k}**: {v}" for k, v in meta.items()] + ["", "## Results", "",
                 markdown_tables(rows), "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in pngs] + [
                 "", "## λ per evaluation", "", "| solver | NFE | λ |", "|---|---:|---|"]
        lines += [f"| {s} | {n} | {', '.join(f'{v:.4f}' for v in vals)} |"
                  for s, by in lambdas.items() for n, vals in sorted(by.items())]
        (out / REPORT_FILE).write_text("\n".join(lines) + "\n")
        (out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows, "cells": cells}, indent=2))
        files = {p.name: p for p in (out / REPORT_FILE, out / "results.json", *pngs)}
        art = reg.publish("report", title, files, params={"meta": meta}, parents=parents, provenance=provenance)
    log.info("report -> %s", reg.local_path(art, REPORT_FILE) if reg.local else art.id)
    return art.id


@task(name="report", **CACHED, retries=2, retry_delay_seconds=1)
def publish_report(registry: str, title: str, meta: dict, rows: list[dict], cells: list[dict],
                   teacher_samples: str, parents: list[str]) -> str:
    """The report as a registry artifact (see ``render_report``)."""
    return render_report(registry, title, meta, rows, cells, teacher_samples, parents, provenance=provenance())
