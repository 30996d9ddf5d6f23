"""The sweep's report: its results as text and markdown tables, with PNG plots (``dode.plots``), published
as a registry "report" artifact (report.md, results.json and the plots)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from .generate import load_samples
from .plots import GRID_TILES, plot_lambdas, plot_metrics, plot_samples
from .store.lambdas import load_lambdas

REPORT_FILE = "report.md"
log = logging.getLogger(__name__)


def fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.4g}"


def change(row: dict[str, Any], unit: str = "%") -> str:
    """D-ODE's relative change over base, signed, or a dash when base is 0."""
    return "—" if row["change_pct"] is None else f"{row['change_pct']:+.1f}{unit}"


def variant_names(rows: list[dict[str, Any]]) -> list[str]:
    """The variants compared in these rows, in order of first appearance."""
    return list(dict.fromkeys(v for r in rows for v in r.get("variants", {})))


def text_table(rows: list[dict[str, Any]]) -> str:
    """The results as a fixed-width text table (one line per solver, NFE and metric; a dash where a variant
    was not fitted)."""
    names = variant_names(rows)
    head = (f"{'solver':<10} {'NFE':>3}  {'metric':<16} {'base':>10} {'D-ODE':>10}"
            + "".join(f" {n[:14]:>14}" for n in names) + f" {'teacher':>10} {'change':>8}")
    lines = [head, "-" * len(head)]
    for r in rows:
        extra = "".join(f" {fmt(r.get('variants', {}).get(n)):>14}" for n in names)
        lines.append(f"{r['solver']:<10} {r['nfe']:>3}  {r['label']:<16} {r['base']:>10.4g} {r['dode']:>10.4g}"
                     f"{extra} {fmt(r['teacher']):>10} {change(r):>8}")
    return "\n".join(lines)


def markdown_tables(rows: list[dict[str, Any]]) -> str:
    """One table per metric: solver, NFE, base, D-ODE, the variants, teacher, change, the guards' choices."""
    names = variant_names(rows)
    out = []
    for label in dict.fromkeys(r["label"] for r in rows):
        out += [f"### {label}", "", "| solver | NFE | base | D-ODE | " + "".join(f"{n} | " for n in names)
                + "teacher | change | guard chose |", "|---|---:|---:|---:|" + "---:|" * len(names) + "---:|---:|---|"]
        for r in (r for r in rows if r["label"] == label):
            extra = "".join(f"{fmt(r.get('variants', {}).get(n))} | " for n in names)
            guard = ", ".join(f"{k}: {v}" for k, v in r.get("guard", {}).items() if v)
            out.append(f"| {r['solver']} | {r['nfe']} | {fmt(r['base'])} | {fmt(r['dode'])} | {extra}"
                       f"{fmt(r['teacher'])} | {change(r, ' %')} | {guard or '—'} |")
        out.append("")
    return "\n".join(out)


def sample_panels(registry: Any, cells: list[dict], teacher_samples: str) -> dict[str, dict[str, Any]]:
    """Base | D-ODE | teacher samples of each solver's smallest NFE (the first GRID_TILES^2 seeds)."""
    first: dict[str, dict] = {}
    for cell in sorted(cells, key=lambda c: c["nfe"]):
        first.setdefault(cell["solver"], cell)
    n = GRID_TILES**2
    teacher = load_samples(registry, teacher_samples)[:n]
    return {f"{s} NFE {c['nfe']}": {"base": load_samples(registry, c["base"])[:n],
                                    "D-ODE": load_samples(registry, c["dode"])[:n], "teacher": teacher}
            for s, c in first.items()}


def report_markdown(title: str, meta: dict, rows: list[dict], lambdas: dict[str, dict[int, list[float]]],
                    pngs: list[Path]) -> str:
    """report.md: the run's settings, one results table per metric, the plots, lambda per evaluation."""
    lines = [f"# {title}", ""] + [f"- **{k}**: {v}" for k, v in meta.items()] + ["", "## Results", "",
             markdown_tables(rows), "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in pngs] + [
             "", "## λ per evaluation", "", "| solver | NFE | λ |", "|---|---:|---|"]
    lines += [f"| {s} | {n} | {', '.join(f'{v:.4f}' for v in vals)} |"
              for s, by in lambdas.items() for n, vals in sorted(by.items())]
    return "\n".join(lines) + "\n"


def render_report(registry: Any, title: str, meta: dict, rows: list[dict], cells: list[dict], teacher_samples: str,
                  parents: list[str], *, provenance: dict | None = None) -> str:
    """Render the report (markdown + PNGs) and publish it as a "report" artifact; returns its id."""
    lambdas: dict[str, dict[int, list[float]]] = {}
    for cell in cells:
        lambdas.setdefault(cell["solver"], {})[cell["nfe"]] = list(load_lambdas(registry, cell["lambdas"]).values)
    panels = sample_panels(registry, cells, teacher_samples)
    with TemporaryDirectory() as tmp:
        out = Path(tmp)
        pngs = [*plot_metrics(rows, out), plot_lambdas(lambdas, out), plot_samples(panels, out)]
        (out / REPORT_FILE).write_text(report_markdown(title, meta, rows, lambdas, pngs))
        (out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows, "cells": cells}, indent=2))
        files = {p.name: p for p in (out / REPORT_FILE, out / "results.json", *pngs)}
        art = registry.publish("report", title, files, params={"meta": meta}, parents=parents, provenance=provenance)
    log.info("report -> %s", registry.local_path(art, REPORT_FILE) if registry.local else art.id)
    return art.id
