"""The content-addressed artifact registry on a local directory: ids, lineage, integrity, atomicity."""

import ast
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import dode
from dode.store import load_lambdas, save_lambdas
from dode.store.location import registry_location
from dode.store.registry import KINDS, Registry


@pytest.fixture
def reg(tmp_path):
    return Registry(tmp_path / "registry")


def chain(reg):
    """model <- trajectory <- lambdas <- score, as a pipeline would publish them."""
    model = reg.publish("model", "digits-ddpm", {"weights.bin": b"w" * 100}, provenance={"model": "fp-digits"})
    traj = reg.publish("trajectory", "digits-ddpm/euler/x10", {"t.parquet": b"p" * 1000}, parents=[model],
                       params={"steps": 50})
    lam = save_lambdas(reg, dode.Lambdas([0.1, -0.2], "euler", [2.0, 1.0, 0.0]), "digits-ddpm/euler/nfe2",
                       parents=[traj.id[:10]], params={"teacher_factor": 10})
    score = reg.publish_json("score", "digits-ddpm/euler/nfe2/fid", {"fid": 12.5}, parents=[lam, model])
    return model, traj, lam, score


def test_identical_content_is_one_artifact_and_any_change_is_another(reg, tmp_path):
    src = tmp_path / "data.bin"
    src.write_bytes(b"abc" * 1000)
    a = reg.publish("samples", "k", {"data.bin": src, "meta.json": b"{}"}, params={"n": 3, "seeds": [0, 1]})
    created = a.created
    again = reg.publish("samples", "k", {"meta.json": b"{}", "data.bin": b"abc" * 1000}, params={"seeds": [0, 1], "n": 3})
    assert again.id == a.id and again.created == created  # path vs bytes, dict order: same content, no-op
    assert len(reg.list()) == 1
    assert a.files["data.bin"] == {"sha256": hashlib.sha256(b"abc" * 1000).hexdigest(), "size": 3000}
    variants = [
        reg.publish("samples", "k", {"data.bin": b"abc" * 999 + b"abd", "meta.json": b"{}"}, params={"n": 3, "seeds": [0, 1]}),
        reg.publish("samples", "k", {"data.bin": src, "meta.json": b"{}"}, params={"n": 4, "seeds": [0, 1]}),
        reg.publish("samples", "k2", {"data.bin": src, "meta.json": b"{}"}, params={"n": 3, "seeds": [0, 1]}),
        reg.publish("report", "k", {"data.bin": src, "meta.json": b"{}"}, params={"n": 3, "seeds": [0, 1]}),
        reg.publish("samples", "k", {"data2.bin": src, "meta.json": b"{}"}, params={"n": 3, "seeds": [0, 1]}),
    ]
    assert len({v.id for v in variants} | {a.id}) == 6
    assert reg.read_bytes(a.id[:8], "data.bin") == b"abc" * 1000
    assert reg.local_path(a, "data.bin").read_bytes() == b"abc" * 1000


def test_find_lists_and_lineage(reg):
    model, traj, lam, score = chain(reg)
    assert [a.id for a in reg.list()] == [model.id, traj.id, lam.id, score.id]
    assert reg.list("lambdas") == [lam]
    assert reg.find("lambdas", solver="euler", nfe=2) == [lam]
    assert reg.find("lambdas", solver="heun") == []
    newer = reg.publish("trajectory", "digits-ddpm/euler/x10", {"t.parquet": b"q"}, params={"steps": 50})
    assert reg.find("trajectory", "digits-ddpm/euler/x10", steps=50) == [newer, traj]  # newest first
    assert [a.kind for a in reg.lineage(score.id[:6])] == ["score", "lambdas", "trajectory", "model"]
    assert lam.provenance["model"] == "fp-digits"  # inherited down the lineage
    assert reg.read_json(score) == {"fid": 12.5}
    assert load_lambdas(reg, lam.id[:7]).values == (0.1, -0.2)
    with pytest.raises(ValueError, match="is a 'score' artifact"):
        load_lambdas(reg, score)
    with pytest.raises(ValueError, match="unknown artifact kind 'fid'; choose one of"):
        reg.list("fid")
    assert reg.verify() == []


def test_provenance_is_what_the_caller_passes_plus_versions(tmp_path, monkeypatch):
    def no_subprocess(*args, **kwargs):
        raise AssertionError("the registry must run no subprocess")

    monkeypatch.setenv("PREFECT__FLOW_RUN_ID", "from-the-environment")
    monkeypatch.setattr(subprocess, "run", no_subprocess)
    reg = Registry(tmp_path / "registry", provenance={"prefect_flow_run_id": "0f1e2d3c-run", "code_version": "abc123"})
    art = reg.publish("report", "r", {"r.md": b"# hi"}, provenance={"model": "fp", "seed": 3, "code_version": "def456"})
    prov = art.provenance
    assert prov["dode_version"] == dode.__version__ and prov["prefect_flow_run_id"] == "0f1e2d3c-run"
    assert prov["model"] == "fp" and prov["seed"] == 3 and prov["code_version"] == "def456"  # the call wins
    assert {"torch", "numpy", "pyarrow"} <= set(prov["packages"]) and "git_commit" not in prov
    plain = Registry(tmp_path / "plain").publish("report", "r", {"r.md": b"# hi"})
    assert "prefect_flow_run_id" not in plain.provenance  # nothing is read from the environment
    for module in Path(dode.__file__).parent.joinpath("store").glob("*.py"):
        tree = ast.parse(module.read_text())
        imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        strings = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
        assert not imported & {"subprocess", "prefect", "flows"}, module
        assert not [t for t in strings if t.upper().startswith("PREFECT")], module


def test_ids_resolve_by_unique_prefix_and_unknown_ones_list_close_matches(reg):
    arts = [reg.publish("report", f"report-{i}", {"r.txt": str(i).encode()}) for i in range(20)]
    by_first = {}
    for a in arts:  # 20 ids over 16 hex digits: some first digit repeats
        by_first.setdefault(a.id[0], []).append(a)
    shared = next(group for group in by_first.values() if len(group) > 1)
    with pytest.raises(ValueError, match="ambiguous") as err:
        reg.get(shared[0].id[0])
    assert all(a.id in str(err.value) for a in shared)
    target = arts[7]
    assert reg.get(target.id[:12].upper()) == target
    typo = target.id[:11] + ("0" if target.id[11] != "0" else "1")
    with pytest.raises(ValueError, match=f"no artifact '{typo}' .*close matches:\n  {target.id}"):
        reg.get(typo)
    with pytest.raises(ValueError, match="close matches:\n  .*report-13"):
        reg.get("report-13")
    with pytest.raises(ValueError, match="no file 'x.txt'; its files: \\['r.txt'\\]"):
        reg.read_bytes(target, "x.txt")


def test_bad_input_is_refused_before_anything_is_written(reg, tmp_path):
    with pytest.raises(ValueError, match="unknown artifact kind 'weights'; choose one of"):
        reg.publish("weights", "k", {"a": b""})
    with pytest.raises(ValueError, match="relative path"):
        reg.publish("report", "k", {"../escape.txt": b""})
    with pytest.raises(ValueError, match="plain JSON"):
        reg.publish("report", "k", {"a": b""}, params={"x": object()})
    with pytest.raises(ValueError, match="neither bytes nor an existing file"):
        reg.publish("report", "k", {"a": tmp_path / "missing"})
    with pytest.raises(ValueError, match="no artifact 'abc123'"):
        reg.publish("report", "k", {"a": b""}, parents=["abc123"])
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(ValueError, match=r"registry .*a-file/registry is not writable .* --registry URI or \$DODE_REGISTRY"):
        Registry(blocker / "registry").publish("report", "k", {"a": b"1"})
    assert reg.list() == []


def test_a_directory_is_published_file_by_file(reg, tmp_path):
    folder = tmp_path / "unet"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "sub" / "weights.bin").write_bytes(b"\0" * 64)
    art = reg.publish("model", "tiny-unet", {"unet": folder})
    assert sorted(art.files) == ["unet/config.json", "unet/sub/weights.bin"]
    local = reg.local_dir(art) / "unet"
    assert (local / "sub" / "weights.bin").read_bytes() == b"\0" * 64


def test_tampering_is_detected_on_read_get_and_verify(reg, tmp_path):
    _, traj, lam, _ = chain(reg)
    stored = reg.local_path(traj, "t.parquet")
    os.chmod(stored, 0o644)
    stored.write_bytes(b"p" * 999 + b"X")
    with pytest.raises(ValueError, match="file 't.parquet' of artifact .* fails its sha256 check"):
        reg.read_bytes(traj, "t.parquet")
    with pytest.raises(ValueError, match="file 't.parquet' of artifact .* fails its sha256 check .*not written"):
        reg.fetch(traj, tmp_path / "out")
    assert not (tmp_path / "out" / "t.parquet").exists()
    manifest = Path(reg.manifest_path(lam.id))
    os.chmod(manifest, 0o644)
    manifest.write_text(manifest.read_text().replace('"solver": "euler"', '"solver": "heun"'))
    problems = reg.verify()
    assert len(problems) == 2
    assert any(f"artifact {traj.short}: file 't.parquet' fails its sha256 check" in p for p in problems)
    assert any("manifest does not hash to its id" in p for p in problems)
    assert reg.verify(traj.id[:9]) == [p for p in problems if traj.id[:12] in p]


def test_fetch_verifies_and_never_overwrites_other_content(reg, tmp_path):
    model, *_ = chain(reg)
    out = reg.fetch(model.id[:5], tmp_path / "out")
    assert (out / "weights.bin").read_bytes() == b"w" * 100
    assert reg.fetch(model, out) == out  # identical content already there: nothing to do
    (out / "weights.bin").write_bytes(b"mine")
    with pytest.raises(ValueError, match="exists with other content; remove it or choose another output folder"):
        reg.fetch(model, out)
    assert (out / "weights.bin").read_bytes() == b"mine"


def test_default_location_is_the_entry_points_concern_with_environment_override(tmp_path, monkeypatch):
    monkeypatch.delenv("DODE_REGISTRY", raising=False)
    monkeypatch.chdir(tmp_path)
    assert Path(registry_location()) == tmp_path / "dode-registry"  # the working directory, as MLflow's ./mlruns
    assert Path(dode.__file__).parents[1] not in Path(registry_location()).parents
    monkeypatch.setenv("DODE_REGISTRY", str(tmp_path / "env-registry"))
    assert registry_location() == str(tmp_path / "env-registry")
    assert registry_location(tmp_path / "given") == str(tmp_path / "given")
    with pytest.raises(ValueError, match="needs a location .*registry_location"):
        Registry(None)
    assert set(KINDS) == {"trajectory", "lambdas", "samples", "reference-stats", "score", "report", "model", "gaussian"}


CHILD = """
import os, signal, sys, time
from dode.store import registry, storage
reg = registry.Registry(sys.argv[1])
mode = sys.argv[2]
if mode == "slow":  # the file streams in slowly, so the parent can kill us mid-copy
    def slow(content):
        for i in range(300):
            time.sleep(0.01)
            yield bytes([i % 256]) * 65536
    storage.chunks = slow
if mode == "die-before-manifest":
    commit = storage.LocalStorage.commit
    def dying_commit(self, staged, key):
        if key.endswith("manifest.json"):
            os.kill(os.getpid(), signal.SIGKILL)
        commit(self, staged, key)
    storage.LocalStorage.commit = dying_commit
if mode == "race":
    print("ready", flush=True)
    while not os.path.exists(sys.argv[3]):
        time.sleep(0.005)
print("publishing", flush=True)
art = reg.publish("samples", "big", {"x.bin": bytes(range(256)) * (1 << 17), "y.json": b"[1]"}, params={"n": 1})
print(art.id, flush=True)
"""


def child(root, mode, *extra):
    return subprocess.Popen([sys.executable, "-c", CHILD, str(root), mode, *map(str, extra)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def assert_nothing_visible(root):
    """No artifact listed; the killed writer's partial files are reported until `gc` removes them."""
    reg = Registry(root)
    assert reg.list() == [] and list(Path(root).glob("artifacts/*/manifest.json")) == []
    stale = reg.verify()
    assert stale and all(p.startswith("staging: stale partial") for p in stale)
    assert len(reg.gc()) == len(stale) and reg.verify() == [] and list((Path(root) / "staging").iterdir()) == []


def test_a_writer_killed_while_copying_leaves_nothing_visible(tmp_path):
    root = tmp_path / "registry"
    proc = child(root, "slow")
    deadline = time.monotonic() + 60
    while not any(p.stat().st_size > 0 for p in (root / "staging").glob("*/*")) and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert any(p.stat().st_size > 0 for p in (root / "staging").glob("*/*"))  # it was killed mid-write
    assert_nothing_visible(root)


def test_a_writer_killed_before_its_manifest_leaves_nothing_visible_and_a_retry_completes(tmp_path):
    root = tmp_path / "registry"
    proc = child(root, "die-before-manifest")
    proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()
    orphan = next(root.glob("artifacts/*/files/x.bin"))  # every file was in place, only the manifest missing
    assert_nothing_visible(root)
    with pytest.raises(ValueError, match="no artifact"):
        Registry(root).get(orphan.parts[-3])
    retry = child(root, "plain")
    out, err = retry.communicate(timeout=120)
    assert retry.returncode == 0, err
    art = Registry(root).get(out.split()[-1])
    assert art.id == orphan.parts[-3] and Registry(root).verify() == []


def test_two_concurrent_publishers_make_one_good_artifact(tmp_path):
    root, go = tmp_path / "registry", tmp_path / "go"
    procs = [child(root, "race", go) for _ in range(2)]
    for p in procs:
        assert p.stdout.readline().strip() == "ready", p.stderr.read()
    go.touch()
    ids = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        ids.append(out.split()[-1])
    reg = Registry(root)
    assert ids[0] == ids[1] and [a.id for a in reg.list()] == ids[:1]
    assert reg.verify() == [] and reg.read_bytes(ids[0], "y.json") == b"[1]"
    assert list((root / "staging").iterdir()) == []
    assert json.loads(Path(reg.manifest_path(ids[0])).read_text())["id"] == ids[0]
