"""The built wheel works without a checkout: pip wheel, install into a bare folder, then from a folder outside
the checkout sample the embedded model (package data) and run one Prefect stage, the registry landing in the
working directory (./dode-registry). The editable install of the development environment must not leak in:
dode and flows are asserted to load from the installed folder."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from dode.store.registry import Registry

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "prefect.yaml", "dode", "flows", "data/models")


def run(args, cwd, env, timeout=600, stderr=False):
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, f"{' '.join(map(str, args))}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr if stderr else done.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(site folder with the installed wheel, the wheel's file names): built from a copy of the sources, so no
    build/ or egg-info of the checkout can add or hide files."""
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src"
    for name in SOURCES:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    build_log = run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-v", "-w", tmp / "wheel", src], tmp,
                    os.environ, stderr=True)
    (wheel,) = (tmp / "wheel").glob("dode-*.whl")
    run([*pip, "install", "--no-deps", "--no-index", "-q", "--target", tmp / "site", wheel], tmp, os.environ)
    return tmp / "site", set(zipfile.ZipFile(wheel).namelist()), build_log


def env_for(site: Path, home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("DODE_REGISTRY", "PYTHONPATH")}
    return {**env, "PYTHONPATH": str(site), "PREFECT_HOME": str(home / "prefect"), "HF_HUB_OFFLINE": "1",
            "OMP_NUM_THREADS": "1"}


def test_the_wheel_holds_every_module_the_models_and_the_deployments(installed):
    _, names, _ = installed
    modules = {str(p.relative_to(ROOT)).replace("flows/", "dode_flows/", 1) if pkg == "flows" else str(p.relative_to(ROOT))
               for pkg in ("dode", "flows") for p in (ROOT / pkg).rglob("*.py")}
    assert modules <= names, sorted(modules - names)
    shipped = {f"dode/_data/{p.relative_to(ROOT / 'data')}" for p in (ROOT / "data" / "models").rglob("*")
               if p.is_file()}
    assert shipped and shipped <= names, sorted(shipped - names)
    assert "dode_flows/prefect.yaml" in names and not any(n.startswith(("data/", "tests/", "dode/_data/registry"))
                                                     for n in names)


def test_the_wheel_builds_without_warnings(installed):
    # Issue 28: no deprecated license table, no package data outside the packages configuration.
    _, _, build_log = installed
    warnings = [line.strip() for line in build_log.splitlines() if "Warning" in line and "Location" not in line]
    assert not warnings, warnings


@pytest.mark.slow
def test_installed_dode_samples_and_runs_a_stage_outside_the_checkout(installed, tmp_path):
    site, _, _ = installed
    work, env = tmp_path / "work", env_for(site, tmp_path)
    work.mkdir()
    (work / "flows").mkdir()  # a user's own flows/ folder does not shadow the installed flows (dode_flows)
    (work / "flows" / "__init__.py").write_text("raise SystemExit('the user folder was imported')\n")
    dode = [site / "bin" / "dode"]
    where = run([sys.executable, "-c", "import dode, dode_flows; print(dode.__file__); print(dode_flows.__file__)"],
                work, env)
    assert all(Path(line).is_relative_to(site) for line in where.split()), where
    show_model = "from dode_flows.demo import sweep_parameters; print(sweep_parameters('digits-sweep')['config']['model'])"
    demo = run([sys.executable, "-c", show_model], work, env)
    assert demo.split() == ["digits-ddpm"]  # the deployments' prefect.yaml travels in the wheel

    sampled = run([*dode, "sample", "--model", "digits-ddpm", "--solver", "euler", "--nfe", "3",
                   "--sampling-n-samples", "8", "--sampling-batch-size", "8", "--quiet"], work, env)
    run([*dode, "run", "teacher", "--model", "mixture-smooth", "--steps", "2", "--teacher-factor", "2",
         "--teacher-n-samples", "8"], work, env)
    kinds = {a.kind for a in Registry(work / "dode-registry").list()}
    assert {"samples", "trajectory"} <= kinds, (kinds, sampled)
    assert not any(site.rglob("dode-registry")) and not (ROOT / "dode-registry").exists()
