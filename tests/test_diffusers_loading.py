"""Saved folders are data: they hold no code, and loading one never runs code found in it.

``import dode`` + ``DiffusionPipeline.from_pretrained(folder)`` in a fresh process gives back the DODEScheduler
(its lambdas and grid) inside a stock pipeline, ``DODEScheduler.from_pretrained(folder, subfolder="scheduler")``
the scheduler alone, ``DODEPipeline.from_pretrained(folder)`` a DODEPipeline; no ``trust_remote_code``. Code
planted in every module a folder could offer (and in the loader modules older dode versions wrote) never runs:
each would write a marker file, and none appears. A model_index.json naming a module of the folder as the
pipeline is refused with one error.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_diffusers_scheduler import tiny_sd_pipeline, tiny_unet2d

from dode.integrations.diffusers.pipeline import DODEPipeline
from dode.integrations.diffusers.scheduler import DODEScheduler

ROOT = Path(__file__).resolve().parents[1]
LOADS = {  # how a user loads each kind of folder, in a fresh process
    "stock": "import dode\nfrom diffusers import DiffusionPipeline\npipe = DiffusionPipeline.from_pretrained(FOLDER)",
    "bare": "from diffusers import DiffusionPipeline\npipe = DiffusionPipeline.from_pretrained(FOLDER)",
    "scheduler": "import dode\npipe = None\ns = dode.DODEScheduler.from_pretrained(FOLDER, subfolder='scheduler')",
    "dode": "from dode import DODEPipeline\npipe = DODEPipeline.from_pretrained(FOLDER)",
}
REPORT = """
s = pipe.scheduler if pipe is not None else s
print(json.dumps({"pipeline": type(pipe).__name__, "scheduler": type(s).__name__, "module": type(s).__module__,
                  "lambdas": list(s.config.lambdas), "sigmas": s.sigmas.tolist()}))
"""
PLANTED = "import pathlib\npathlib.Path({marker!r}).write_text('ran')\n"


def load_in_a_fresh_process(how: str, folder: Path, tmp_path: Path) -> tuple[dict | None, str]:
    """(what loaded, or None) and stderr's last line, from a fresh process that loads ``folder`` as ``how``."""
    code = f"import json\nFOLDER = {str(folder)!r}\n{LOADS[how]}\n{REPORT}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1",
           "HF_MODULES_CACHE": str(tmp_path / "modules")}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    last = (done.stderr.strip().splitlines() or [""])[-1]
    return (json.loads(done.stdout.splitlines()[-1]) if done.returncode == 0 else None), last


def plant(folder: Path, marker: Path, names: list[str]) -> None:
    """Code that writes ``marker`` in every .py of ``folder`` and in each of ``names`` (relative paths)."""
    for path in [*folder.rglob("*.py"), *(folder / name for name in names)]:
        path.write_text(PLANTED.format(marker=str(marker)))


def as_earlier_dode_saved_it(folder: Path, scheduler_module: str) -> None:
    """The folder as dode wrote it before saved folders held no code: loader modules named in model_index.json."""
    index = json.loads((folder / "model_index.json").read_text())
    index["scheduler"] = [scheduler_module, "DODEScheduler"]
    if index["_class_name"] == "DODEPipeline":
        index["_class_name"] = ["dode_pipeline", "DODEPipeline"]
        (folder / "dode_pipeline.py").write_text("from dode.integrations.diffusers.pipeline import DODEPipeline\n")
    (folder / "model_index.json").write_text(json.dumps(index))
    (folder / "scheduler" / f"{scheduler_module}.py").write_text(f"from {scheduler_module} import DODEScheduler\n")


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    """A tiny SD pipeline with a DODEScheduler (lambdas on a DPM-Solver++ grid), saved."""
    pipe = tiny_sd_pipeline()
    pipe.scheduler = DODEScheduler.from_scheduler(pipe.scheduler, solver="dpmpp_2m", nfe=3, lambdas=[0.0, 0.5, -0.2])
    folder = tmp_path_factory.mktemp("sd") / "sd"
    pipe.save_pretrained(folder)
    return pipe, folder


@pytest.fixture(scope="module")
def dode_pipe(tmp_path_factory):
    sched = DODEScheduler.from_scheduler({"beta_schedule": "linear"}, solver="euler", nfe=3, lambdas=[0.0, 0.1, 0.2])
    pipe = DODEPipeline(unet=tiny_unet2d(), scheduler=sched)
    folder = tmp_path_factory.mktemp("dode") / "pipe"
    pipe.save_pretrained(folder)
    return pipe, folder


def test_saved_folders_hold_no_code_and_name_dode_as_the_schedulers_library(sd, dode_pipe):
    for _, folder in (sd, dode_pipe):
        assert not list(folder.rglob("*.py"))
        assert json.loads((folder / "model_index.json").read_text())["scheduler"] == ["dode", "DODEScheduler"]
    assert json.loads((dode_pipe[1] / "model_index.json").read_text())["_class_name"] == "DODEPipeline"


def test_import_dode_then_diffusers_loads_a_stock_pipeline_with_its_lambdas(sd, tmp_path):
    pipe, folder = sd
    want = {"pipeline": "StableDiffusionPipeline", "scheduler": "DODEScheduler", "module": "dode",
            "lambdas": [0.0, 0.5, -0.2], "sigmas": pipe.scheduler.sigmas.tolist()}
    assert load_in_a_fresh_process("stock", folder, tmp_path)[0] == want
    got, _ = load_in_a_fresh_process("scheduler", folder, tmp_path)
    assert got == {**want, "pipeline": "NoneType"}
    got, error = load_in_a_fresh_process("bare", folder, tmp_path)  # without import dode: diffusers says what to do
    assert got is None and "import dode before calling `from_pretrained`" in error


def test_a_dode_pipeline_loads_in_a_fresh_process(dode_pipe, tmp_path):
    got, error = load_in_a_fresh_process("dode", dode_pipe[1], tmp_path)
    assert got is not None, error
    assert (got["pipeline"], got["scheduler"], got["lambdas"]) == ("DODEPipeline", "DODEScheduler", [0.0, 0.1, 0.2])


@pytest.mark.parametrize("kind", ["stock", "dode"])
def test_code_planted_in_a_folder_never_runs(sd, dode_pipe, kind, tmp_path):
    """Planted in every module a loader could import: the pipeline's and the components' library names, the
    loader modules earlier dode versions wrote. diffusers refuses a folder that ships a library as code
    unless the user passes trust_remote_code=True, and nothing planted runs."""
    source = sd[1] if kind == "stock" else dode_pipe[1]
    folder, marker = tmp_path / "folder", tmp_path / "RAN"
    subprocess.run(["cp", "-r", str(source), str(folder)], check=True)
    as_earlier_dode_saved_it(folder, "dode.integrations.diffusers.scheduler")
    plant(folder, marker, ["None.py", "dode.py", "scheduler/dode.py", "unet/diffusers.py"])
    got, error = load_in_a_fresh_process(kind, folder, tmp_path)
    assert not marker.exists()
    assert got is None and "trust_remote_code=True" in error


def test_a_folder_of_an_earlier_dode_version_loads_without_running_its_loader_modules(sd, dode_pipe, tmp_path):
    marker = tmp_path / "RAN"
    for kind, (pipe, source), module in (("stock", sd, "dode.integrations.diffusers.scheduler"),
                                         ("dode", dode_pipe, "dode.diffusers_scheduler")):  # before the rooms
        folder = tmp_path / kind
        subprocess.run(["cp", "-r", str(source), str(folder)], check=True)
        as_earlier_dode_saved_it(folder, module)
        plant(folder, marker, [])
        if kind == "dode":  # DODEPipeline reads the old entries as ["dode", class]: the modules stay unread
            got, error = load_in_a_fresh_process("dode", folder, tmp_path)
            assert got is not None and got["lambdas"] == [0.0, 0.1, 0.2], error
        else:  # a stock pipeline takes the scheduler loaded from its config (diffusers checks its class against
            # the module model_index.json names, which must be imported: DODEScheduler's is), past the folder's
            sched = DODEScheduler.from_pretrained(folder, subfolder="scheduler")
            back = type(pipe).from_pretrained(folder, scheduler=sched)
            assert back.scheduler.config.lambdas == [0.0, 0.5, -0.2]
    assert not marker.exists()


def test_a_model_index_naming_a_module_of_the_folder_is_refused_before_anything_runs(dode_pipe, tmp_path):
    folder, marker = tmp_path / "pipe", tmp_path / "RAN"
    subprocess.run(["cp", "-r", str(dode_pipe[1]), str(folder)], check=True)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": ["evil", "DODEPipeline"]}))
    plant(folder, marker, ["evil.py"])
    for trust in (False, True):  # trust_remote_code is for DiffusionPipeline: DODEPipeline is dode's own code
        with pytest.raises(ValueError, match=r"names the pipeline \['evil', 'DODEPipeline'\], not 'DODEPipeline'"):
            DODEPipeline.from_pretrained(folder, trust_remote_code=trust)
    assert not marker.exists()


@pytest.mark.parametrize("bad", [float("nan"), 1e300, "0.5"])
def test_a_saved_scheduler_with_corrupt_lambdas_is_refused(sd, bad, tmp_path):
    folder = tmp_path / "scheduler"
    sd[0].scheduler.save_pretrained(folder)
    config = json.loads((folder / "scheduler_config.json").read_text())
    (folder / "scheduler_config.json").write_text(json.dumps({**config, "lambdas": [0.1, bad, 0.3]}))
    with pytest.raises(ValueError, match="lambdas must be finite|must be a list of numbers"):
        DODEScheduler.from_pretrained(folder)
