"""The sweep report: sample grids for every NFE and side, lambda and learned-grid plots, and the Prefect UI
markdown (images inlined as data URIs within the event-size budget, downloads as command lines)."""

import base64
import io

import numpy as np
import pytest
from PIL import Image

from dode.core.correction import Lambdas
from dode.pipeline.report import (
    IMAGE_LINK,
    UI_BUDGET,
    downloads,
    learned_grids,
    render_report,
    sample_panels,
    ui_markdown,
)
from dode.store.lambdas import save_lambdas
from dode.store.registry import Registry

START = [80.0, 10.0, 1.0, 0.0]


def chunk(reg: Registry, key: str, value: int) -> str:
    images = np.full((16, 1, 8, 8), value, np.uint8)
    buf = io.BytesIO()
    np.save(buf, images)
    return reg.publish("samples", key, {"images.npy": buf.getvalue()}, params={"seeds": [0, 16]}).id


def lambdas(reg: Registry, key: str, sigmas: list[float], values=(0.1, -0.2, 0.3)) -> str:
    lam = Lambdas(values, "euler", sigmas, objective="final", fit={"start_sigmas": START})
    return save_lambdas(reg, lam, key).id


@pytest.fixture
def sweep(tmp_path):
    """Two cells (euler NFE 3 and 4), each with base, D-ODE and a "λ+timesteps" variant on a learned grid."""
    reg = Registry(tmp_path / "reg")
    cells, rows = [], []
    for nfe in (3, 4):
        dode_id = lambdas(reg, f"dode-{nfe}", START, values=(0.1,) * nfe)
        var_id = lambdas(reg, f"var-{nfe}", [80.0, 20.0, 0.5, 0.0], values=(0.2,) * nfe)
        samples = {"base": chunk(reg, f"b{nfe}", 10 * nfe), "dode": chunk(reg, f"d{nfe}", 11 * nfe),
                   "λ+timesteps": chunk(reg, f"v{nfe}", 12 * nfe)}
        cells.append({"solver": "euler", "nfe": nfe, "lambdas": dode_id, "variants": {"λ+timesteps": var_id},
                      "samples": samples, "base": samples["base"], "dode": samples["dode"]})
        rows.append({"solver": "euler", "nfe": nfe, "metric": "rmse", "label": "RMSE", "base": 1.0, "dode": 0.5,
                     "variants": {"λ+timesteps": 0.25}, "teacher": 0.0, "change_pct": -50.0,
                     "guard": {"dode": "final"}})
    return reg, cells, rows, chunk(reg, "teacher", 200)


def test_sample_panels_every_nfe_every_side(sweep):
    reg, cells, _, teacher = sweep
    panels = sample_panels(reg, cells, teacher)
    assert list(panels) == ["euler NFE 3", "euler NFE 4"]
    assert list(panels["euler NFE 4"]) == ["base", "D-ODE", "λ+timesteps", "teacher"]
    assert panels["euler NFE 4"]["λ+timesteps"].max() == 48 and panels["euler NFE 3"]["teacher"].max() == 200
    assert list(sample_panels(reg, cells, teacher, nfes=[4])) == ["euler NFE 4"]
    with pytest.raises(ValueError, match=r"no cell of the sweep has an NFE in \[7\]; the sweep has \[3, 4\]"):
        sample_panels(reg, cells, teacher, nfes=[7])


def test_report_has_variant_lambdas_and_learned_grids(sweep):
    reg, cells, rows, teacher = sweep
    report = reg.get(render_report(reg, "t", {"model": "m"}, rows, cells, teacher, []))
    assert {"report.md", "results.json", "lambdas.png", "grids.png", "samples.png", "metric-rmse.png"} == set(report.files)
    text = reg.read_bytes(report, "report.md").decode()
    assert "![grids](grids.png)" in text and "![samples](samples.png)" in text
    assert "| euler | 4 | λ+timesteps | 0.2000, 0.2000, 0.2000, 0.2000 | 80, 20, 0.5, 0 |" in text
    assert "| euler | 3 | D-ODE | 0.1000, 0.1000, 0.1000 | start grid |" in text
    fits = {"euler": {3: {"D-ODE": Lambdas((0.1,) * 3, "euler", START, fit={"start_sigmas": START})}}}
    assert learned_grids(fits) == {}  # no grid plot when no fit moved its grid


def png(width: int, height: int, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def test_ui_markdown_inlines_images_as_data_uris():
    small = png(20, 10)
    text = ui_markdown("# r\n![lambdas](lambdas.png)\n![other](elsewhere.png)\n", {"lambdas.png": small})
    (uri,) = [m.group(2) for m in IMAGE_LINK.finditer(text) if m.group(1) == "lambdas"]
    assert uri == "data:image/png;base64," + base64.b64encode(small).decode()  # small: inlined as is
    assert "![other](elsewhere.png)" in text  # not an image of the report: left alone


def test_ui_markdown_downscales_then_drops_to_stay_within_the_budget():
    big = png(400, 300)  # random pixels: ~360 kB, ~480 kB as base64
    text = ui_markdown("![a](a.png) ![b](b.png)", {"a.png": big, "b.png": png(400, 300, 1)}, budget=600_000)
    assert len(text) <= 600_000 and text.count("data:image/png;base64,") == 2
    uris = [m.group(2) for m in IMAGE_LINK.finditer(text)]
    shrunk = Image.open(io.BytesIO(base64.b64decode(uris[0].split(",", 1)[1])))
    assert shrunk.size[0] < 400 and shrunk.mode == "P"
    text = ui_markdown("![a](a.png) ![b](b.png)", {"a.png": big, "b.png": png(20, 15)}, budget=5_000)
    assert len(text) <= 5_000 and "data:image/png;base64," in text  # the small one fits
    assert "*(a.png: too large for the Prefect UI; in the report artifact)*" in text
    assert UI_BUDGET < 1_500_000  # Prefect's default PREFECT_SERVER_EVENTS_MAXIMUM_SIZE_BYTES


def test_downloads_are_command_lines_not_file_urls(sweep):
    reg, cells, _, _ = sweep
    text = downloads(reg, [cells[0]["lambdas"], cells[0]["lambdas"]])
    assert "file://" not in text and text.count("dode artifacts get") == 1
    art = reg.get(cells[0]["lambdas"])
    block = text.split("```bash\n", 1)[1].split("```", 1)[0].splitlines()
    assert block == [f"# lambdas: {art.key}", f"dode artifacts get {art.id} --registry {reg.uri} --out {art.id[:12]}"]
    assert "|" not in text  # no table: its cells cut long command lines off in the Prefect UI
