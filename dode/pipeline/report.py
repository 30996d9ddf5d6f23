"""The sweep's report: its results as text and markdown tables, with PNG plots (``dode.pipeline.plots``), published
as a registry "report" artifact (report.md with relative image links, results.json and the plots), and the
same report for the Prefect UI (``ui_markdown``: images inlined as data URIs, downloads as command lines)."""

from __future__ import annotations

import base64
import io
import json
import logging
import re
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from dode.core.correction import Lambdas
from dode.metrics.spread import SETS, with_spread
from dode.pipeline.commands import get_command
from dode.pipeline.plots import GRID_TILES, plot_grids, plot_lambdas, plot_metrics, plot_samples
from dode.pipeline.sweep import cell_fits
from dode.store.lambdas import load_lambdas
from dode.store.samples import load_samples

REPORT_FILE = "report.md"
SIDE_NAMES = {"dode": "D-ODE"}  # a cell's sample sides as the report names them; variants keep their names
# Prefect markdown artifacts: the server stores 64 MB of markdown (measured, Prefect 3.9), but refuses to publish
# the artifact's event above PREFECT_SERVER_EVENTS_MAXIMUM_SIZE_BYTES (1.5 MB by default; the event carries the
# markdown). The UI report is kept under 1 MB, so its event always goes through.
UI_BUDGET = 1_000_000
UI_SCALES = (1.0, 0.75, 0.5, 0.35, 0.25)  # downscaling steps for images that do not fit UI_BUDGET
IMAGE_LINK = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)")
SPREAD_NOTE = (f"values: mean ± standard deviation over {SETS} disjoint evaluation sets of the samples "
               "(seeds s with s mod 3 = 0, 1, 2)")
log = logging.getLogger(__name__)


def fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.4g}"


def cell(row: dict[str, Any], side: str) -> str:
    """A side's value with its spread over the disjoint evaluation sets (``value ± spread``), where known."""
    value = row.get("variants", {}).get(side) if side not in ("base", "dode", "teacher") else row[side]
    return with_spread(value, row.get("spread", {}).get(side))


def change(row: dict[str, Any], unit: str = "%") -> str:
    """D-ODE's relative change over base, signed, or a dash when base is 0."""
    return "—" if row["change_pct"] is None else f"{row['change_pct']:+.1f}{unit}"


def variant_names(rows: list[dict[str, Any]]) -> list[str]:
    """The variants compared in these rows, in order of first appearance."""
    return list(dict.fromkeys(v for r in rows for v in r.get("variants", {})))


def text_table(rows: list[dict[str, Any]]) -> str:
    """The results as a fixed-width text table (one line per solver, NFE and metric; each value the mean over
    the disjoint evaluation sets ± their standard deviation; a dash where a variant was not fitted)."""
    names = variant_names(rows)
    head = (f"{'solver':<10} {'NFE':>3}  {'metric':<16} {'base':>16} {'D-ODE':>16}"
            + "".join(f" {n[:16]:>16}" for n in names) + f" {'teacher':>16} {'change':>8}")
    lines = [head, "-" * len(head)]
    for r in rows:
        extra = "".join(f" {cell(r, n):>16}" for n in names)
        lines.append(f"{r['solver']:<10} {r['nfe']:>3}  {r['label']:<16} {cell(r, 'base'):>16} {cell(r, 'dode'):>16}"
                     f"{extra} {cell(r, 'teacher'):>16} {change(r):>8}")
    return "\n".join(lines + [SPREAD_NOTE] * any(r.get("spread") for r in rows))


def markdown_tables(rows: list[dict[str, Any]]) -> str:
    """One table per metric: solver, NFE, base, D-ODE, the variants, teacher (each ``mean ± spread``), change,
    the guards' choices."""
    names = variant_names(rows)
    out = [SPREAD_NOTE, ""] * any(r.get("spread") for r in rows)
    for label in dict.fromkeys(r["label"] for r in rows):
        out += [f"### {label}", "", "| solver | NFE | base | D-ODE | " + "".join(f"{n} | " for n in names)
                + "teacher | change | guard chose |", "|---|---:|---:|---:|" + "---:|" * len(names) + "---:|---:|---|"]
        for r in (r for r in rows if r["label"] == label):
            extra = "".join(f"{cell(r, n)} | " for n in names)
            guard = ", ".join(f"{k}: {v}" for k, v in r.get("guard", {}).items() if v)
            out.append(f"| {r['solver']} | {r['nfe']} | {cell(r, 'base')} | {cell(r, 'dode')} | {extra}"
                       f"{cell(r, 'teacher')} | {change(r, ' %')} | {guard or '—'} |")
        out.append("")
    return "\n".join(out)


def sample_panels(registry: Any, cells: list[dict], teacher_samples: str,
                  nfes: list[int] | None = None) -> dict[str, dict[str, Any]]:
    """Samples side by side for every cell of the sweep (or of the NFEs in ``nfes``), by solver then NFE: base |
    D-ODE | each variant | teacher, the first GRID_TILES^2 seeds of each."""
    n = GRID_TILES**2
    teacher = load_samples(registry, teacher_samples)[:n]
    chosen = [c for c in cells if nfes is None or c["nfe"] in nfes]
    if not chosen:
        raise ValueError(f"no cell of the sweep has an NFE in {nfes}; the sweep has {sorted({c['nfe'] for c in cells})}")
    order = list(dict.fromkeys(c["solver"] for c in cells))
    panels = {}
    for c in sorted(chosen, key=lambda c: (order.index(c["solver"]), c["nfe"])):
        sides = c.get("samples") or {"base": c["base"], "dode": c["dode"]}
        panels[f"{c['solver']} NFE {c['nfe']}"] = {
            **{SIDE_NAMES.get(side, side): load_samples(registry, sid)[:n] for side, sid in sides.items()},
            "teacher": teacher}
    return panels


def fitted(registry: Any, cells: list[dict]) -> dict[str, dict[int, dict[str, Lambdas]]]:
    """Every cell's fitted lambdas by solver, NFE and fit ("D-ODE", then the variants)."""
    out: dict[str, dict[int, dict[str, Lambdas]]] = {}
    for c in cells:
        out.setdefault(c["solver"], {})[c["nfe"]] = {
            SIDE_NAMES.get(side, side): load_lambdas(registry, lam) for side, lam in cell_fits(c).items()}
    return out


def learned_grids(fits: dict[str, dict[int, dict[str, Lambdas]]]) -> dict[str, dict[int, dict[str, tuple]]]:
    """The fits that moved their grid (objective "final" with learned sigmas): (start sigmas, learned sigmas)."""
    out: dict[str, dict[int, dict[str, tuple]]] = {}
    for solver, by_nfe in fits.items():
        for nfe, by_fit in by_nfe.items():
            for name, lam in by_fit.items():
                start = lam.fit.get("start_sigmas")
                if start is not None and list(start) != list(lam.sigmas):
                    out.setdefault(solver, {}).setdefault(nfe, {})[name] = (list(start), list(lam.sigmas))
    return out


def report_markdown(title: str, meta: dict, rows: list[dict], fits: dict[str, dict[int, dict[str, Lambdas]]],
                    pngs: list[Path]) -> str:
    """report.md: the run's settings, one results table per metric, the plots (relative links), lambda (and
    the learned sigmas) per fit."""
    lines = [f"# {title}", ""] + [f"- **{k}**: {v}" for k, v in meta.items()] + ["", "## Results", "",
             markdown_tables(rows), "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in pngs] + [
             "", "## λ per evaluation", "", "| solver | NFE | fit | λ | σ (learned grids) |", "|---|---:|---|---|---|"]
    for s, by_nfe in fits.items():
        for n, by_fit in sorted(by_nfe.items()):
            for name, lam in by_fit.items():
                moved = learned_grids({s: {n: {name: lam}}})
                sig = ", ".join(f"{v:.4g}" for v in lam.sigmas) if moved else "start grid"
                lines.append(f"| {s} | {n} | {name} | {', '.join(f'{v:.4f}' for v in lam.values)} | {sig} |")
    return "\n".join(lines) + "\n"


def render_report(registry: Any, title: str, meta: dict, rows: list[dict], cells: list[dict], teacher_samples: str,
                  parents: list[str], *, provenance: dict | None = None, nfes: list[int] | None = None) -> str:
    """Render the report (markdown + PNGs) and publish it as a "report" artifact; returns its id. The sample
    grids show every NFE of the sweep, or those in ``nfes``."""
    fits = fitted(registry, cells)
    values = {s: {n: {f: list(lam.values) for f, lam in by.items()} for n, by in bn.items()} for s, bn in fits.items()}
    grids = learned_grids(fits)
    panels = sample_panels(registry, cells, teacher_samples, nfes)
    with TemporaryDirectory() as tmp:
        out = Path(tmp)
        pngs = [*plot_metrics(rows, out), plot_lambdas(values, out), *([plot_grids(grids, out)] if grids else []),
                plot_samples(panels, out)]
        (out / REPORT_FILE).write_text(report_markdown(title, meta, rows, fits, pngs))
        (out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows, "cells": cells}, indent=2))
        files = {p.name: p for p in (out / REPORT_FILE, out / "results.json", *pngs)}
        art = registry.publish("report", title, files, params={"meta": meta}, parents=parents, provenance=provenance)
    log.info("report -> %s", registry.local_path(art, REPORT_FILE) if registry.local else art.id)
    return art.id


def downloads(registry: Any, ids: list[str]) -> str:
    """A markdown section: how to get each artifact from any machine, the ``dode artifacts get`` command line and
    (for a remote registry) its fsspec URL; never a file:// URL, which points nowhere on another machine. One code
    block, a command per line: a table cell would cut the long command lines off in the Prefect UI."""
    lines = ["## Downloads", "", "Each command downloads one artifact, every file checked against its sha256:", "",
             "```bash"]
    for art in (registry.get(i) for i in dict.fromkeys(ids)):
        lines.append(f"# {art.kind}: {art.key}" + ("" if registry.local else f" ({registry.url(art)})"))
        lines.append(get_command(registry, art))
    return "\n".join([*lines, "```"]) + "\n"


def ui_markdown(markdown: str, images: dict[str, bytes], budget: int = UI_BUDGET) -> str:
    """The report for the Prefect UI: each ``![alt](name.png)`` of ``images`` inlined as a data:image/png;base64
    URI (the UI renders markdown images as <img src>, so data URIs show; relative links do not). The whole text
    stays within ``budget`` characters: images are downscaled (palette PNG) step by step, and those that still
    do not fit are replaced by a note naming the file in the report artifact."""
    fixed = len(markdown) + 200 * len(images)
    for scale in UI_SCALES:
        encoded = {name: data_uri(png if scale == 1.0 else shrink(png, scale)) for name, png in images.items()}
        if fixed + sum(map(len, encoded.values())) <= budget:
            break
    while encoded and fixed + sum(map(len, encoded.values())) > budget:
        encoded.pop(max(encoded, key=lambda k: len(encoded[k])))

    def inline(match: re.Match) -> str:
        alt, name = match.group(1), match.group(2)
        if name in encoded:
            return f"![{alt}]({encoded[name]})"
        return match.group(0) if name not in images else f"*({name}: too large for the Prefect UI; in the report artifact)*"

    return IMAGE_LINK.sub(inline, markdown)


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def shrink(png: bytes, scale: float) -> bytes:
    """The PNG downscaled by ``scale`` (Lanczos) and stored as a 256-colour palette PNG."""
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB")
    img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.LANCZOS)
    buf = io.BytesIO()
    img.quantize(256).save(buf, format="PNG", optimize=True)
    return buf.getvalue()
