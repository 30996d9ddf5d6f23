"""``dode artifacts list|show|get|verify`` through the installed console script."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import dode
from dode.store import save_lambdas
from dode.store.registry import Registry

DODE = Path(sys.executable).with_name("dode")


def dode_cli(*argv, env=None):
    done = subprocess.run([str(DODE), "artifacts", *map(str, argv)], capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, **(env or {})})
    return done.returncode, done.stdout, done.stderr


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli") / "registry"
    reg = Registry(root)
    model = reg.publish("model", "digits-ddpm", {"weights.bin": b"w" * 64}, provenance={"model": "fp"})
    traj = reg.publish("trajectory", "digits-ddpm/euler/x10", {"t.parquet": b"t" * 256, "notes/a.txt": b"a"},
                       parents=[model])
    lam = save_lambdas(reg, dode.Lambdas([0.5, 0.25], "euler", [1.0, 0.5, 0.0]), "digits-ddpm/euler/nfe2",
                       parents=[traj])
    return root, reg, model, traj, lam


def test_list_prints_one_artifact_per_line_id_first(published):
    root, _, model, traj, lam = published
    rc, out, err = dode_cli("list", "--registry", root)
    assert rc == 0, err
    lines = out.splitlines()
    assert [line.split()[:3] for line in lines] == [[a.id, a.kind, a.key] for a in (model, traj, lam)]
    rc, out, _ = dode_cli("list", "--kind", "lambdas", env={"DODE_REGISTRY": str(root)})
    assert rc == 0 and [line.split()[0] for line in out.splitlines()] == [lam.id]


def test_list_tells_two_lambdas_of_one_cell_apart_and_prints_json(published):
    root, reg, _, traj, lam = published
    other = save_lambdas(reg, dode.Lambdas([0.1, 0.2], "euler", [1.0, 0.5, 0.0]), lam.key, parents=[traj],
                         params={"fit": {"objective": "final", "options": {"iterations": 5}},
                                 "first_step": "analytic"})
    rc, out, err = dode_cli("list", "--kind", "lambdas", "--registry", root)
    assert rc == 0, err
    line = next(line for line in out.splitlines() if line.startswith(other.id))
    assert 'objective=final' in line and 'options={"iterations":5}' in line and "first_step=analytic" in line
    rc, out, err = dode_cli("list", "--json", "--registry", root)
    listed = json.loads(out)
    assert rc == 0 and {a["id"] for a in listed} >= {lam.id, other.id}
    assert next(a for a in listed if a["id"] == other.id)["params"]["first_step"] == "analytic"


def test_version():
    done = subprocess.run([str(DODE), "--version"], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0 and done.stdout.strip() == f"dode {dode.__version__}"


def test_show_prints_the_manifest_and_the_lineage_down_to_the_model(published):
    root, reg, model, traj, lam = published
    rc, out, err = dode_cli("show", lam.id[:8], "--registry", root)
    assert rc == 0, err
    checked, rest = out.split("\nunverified (not covered by the id", 1)
    unverified, lineage = rest.split("\n", 1)[1].split("lineage:\n")
    assert {**json.loads(checked), **json.loads(unverified)} == json.loads(Path(reg.manifest_path(lam.id)).read_text())
    assert set(json.loads(unverified)) == {"created", "provenance"}
    assert [line.split()[0] for line in lineage.splitlines()] == [lam.id, traj.id, model.id]
    rc, _, err = dode_cli("show", lam.id[:8] + "x", "--registry", root)
    assert rc == 2 and f"no artifact '{lam.id[:8]}x'" in err and f"close matches:\\n  {lam.id}" in err


def test_get_downloads_verified_files_and_names_a_tampered_one(published, tmp_path):
    root, reg, _, traj, _ = published
    rc, out, err = dode_cli("get", traj.id[:10], "--out", tmp_path / "ok", "--registry", root)
    assert rc == 0, err
    assert (tmp_path / "ok" / "t.parquet").read_bytes() == b"t" * 256
    assert (tmp_path / "ok" / "notes" / "a.txt").read_bytes() == b"a"
    assert out.startswith(traj.id) and "2 file(s) verified" in out

    stored = reg.local_path(traj, "notes/a.txt")
    os.chmod(stored, 0o644)
    stored.write_bytes(b"b")
    rc, _, err = dode_cli("get", traj.id[:10], "--out", tmp_path / "bad", "--registry", root)
    assert rc == 2 and "file 'notes/a.txt'" in err and "fails its sha256 check" in err
    assert not (tmp_path / "bad" / "notes" / "a.txt").exists()
    rc, out, err = dode_cli("verify", "--registry", root)
    assert rc == 1 and "1 problem(s)" in out
    assert f"artifact {traj.short}: file 'notes/a.txt' fails its sha256 check" in err
    stored.write_bytes(b"a")
