"""Tamper and fault suite for the registry (issue 14 points 1, 2, 4, 5, 6): every case is refused with one
clear message and a non-zero exit, reads never change the registry, and it verifies again once undone.

Each TAMPER case edits a copy of a pristine registry the way an attacker with write access (or bad luck)
would, then runs the CLI in process (``dode.cli.main``) and a library read. Asserted for every case: the
message, the exit code, that the command left the registry byte for byte as it found it, that nothing
was written outside ``--out``, and that the registry verifies clean once the tamper is undone.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from dode.cli import main as dode_main
from dode.core.correction import Lambdas
from dode.core.grids import GridSpec
from dode.models import load_model
from dode.pipeline.generate import SamplingJob, run_sampling
from dode.store import LAMBDAS_FILE, load_lambdas, read_artifact, save_lambdas
from dode.store.manifest import MANIFEST_VERSION, artifact_id
from dode.store.registry import Registry
from dode.store.samples import iter_samples
from dode.store.staging import LOCK_SUFFIX, StagingArea, hold_lock
from dode.store.trajectory import TrajectoryWriter

TEACHER = "teacher.parquet"
FINGERPRINT = "f" * 64


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def teacher_bytes(tmp: Path, seed: int) -> Path:
    x = np.random.default_rng(seed).standard_normal((3, 4, 1, 2, 2)).astype(np.float32)
    path = tmp / f"teacher-{seed}.parquet"
    with TrajectoryWriter(path, (1, 2, 2), {"sigmas": [2.0, 1.0, 0.0]}) as w:
        for i, xi in enumerate(x):
            w.write_step(i, xi)
    return path


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A registry holding model <- trajectory <- lambdas <- samples chunk, and a report with a sub-folder."""
    tmp = tmp_path_factory.mktemp("pristine")
    reg = Registry(tmp / "registry")
    model = reg.publish("model", "m", {"model.json": b'{"name": "m"}'}, params={"fingerprint": FINGERPRINT})
    traj = reg.publish("trajectory", "m/teacher", {TEACHER: teacher_bytes(tmp, 0)}, parents=[model])
    lam = save_lambdas(reg, Lambdas([0.1, -0.2], "euler", [2.0, 1.0, 0.0], model=FINGERPRINT), "m/euler/nfe2",
                       parents=[traj])
    buf = io.BytesIO()
    np.save(buf, np.arange(48, dtype=np.uint8).reshape(3, 1, 4, 4))
    chunk = reg.publish("samples", "m/chunk", {"images.npy": buf.getvalue()}, params={"seeds": [0, 3]}, parents=[lam])
    report = reg.publish("report", "m/report", {"report.md": b"# ok", "notes/a.txt": b"a"}, parents=[chunk])
    assert reg.verify() == []
    return tmp, {"model": model, "traj": traj, "lam": lam, "chunk": chunk, "report": report}


@pytest.fixture
def copy(pristine, tmp_path):
    """(root of a fresh copy of the pristine registry, the artifacts by role, tmp_path)."""
    src, arts = pristine
    root = tmp_path / "registry"
    shutil.copytree(src / "registry", root, symlinks=True)
    return root, arts, tmp_path


def snapshot(root: Path) -> dict[str, str]:
    """Every entry under ``root``: a file's sha256, a link's target, 'dir' (links not followed)."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        out[rel] = (f"link:{os.readlink(path)}" if path.is_symlink() else "dir" if path.is_dir()
                    else sha(path.read_bytes()) if path.is_file() else "other")
    return out


def writable(path: Path) -> Path:
    os.chmod(path, 0o644)
    return path


def rewrite_manifest(root: Path, id: str, edit: Callable[[dict], None]) -> None:
    path = writable(root / "artifacts" / id / "manifest.json")
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def forge(root: Path, name: str, content: bytes = b"evil") -> str:
    """A self-consistent artifact (its manifest hashes to its id) naming the file ``name``: what anyone with
    write access can make. The bytes go where a naive reader would look for them."""
    hashes = {name: sha(content)}
    id = artifact_id("report", "forged", {}, [], hashes)
    manifest = {"manifest_version": MANIFEST_VERSION, "id": id, "kind": "report", "key": "forged", "params": {},
                "parents": [], "provenance": {}, "created": "2024-01-01T00:00:00+00:00",
                "files": {name: {"sha256": hashes[name], "size": len(content)}}}
    folder = root / "artifacts" / id
    (folder / "files").mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    target = Path(os.path.normpath(folder / "files" / name.replace("\\", "/").lstrip("/")))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(content)
    return id


# Tamper cases: (what it does to the registry) -> (the id to ask for, how to undo it).
def t_traversal(root, arts):
    return forge(root, "../escape.txt"), None


def t_absolute(root, arts):
    return forge(root, "/tmp/dode-absolute.txt"), None


def t_backslash(root, arts):
    return forge(root, "..\\escape.txt"), None


def t_symlink_file(root, arts):
    """files/notes/a.txt becomes a link to a file outside the registry with the very same bytes."""
    stored = root / "artifacts" / arts["report"].id / "files" / "notes" / "a.txt"
    outside = root.parent / "outside.txt"
    outside.write_bytes(b"a")
    stored.unlink()
    stored.symlink_to(outside)
    return arts["report"].id, lambda: (stored.unlink(), stored.write_bytes(b"a"))


def t_symlink_dir(root, arts):
    """files/notes becomes a link to a directory outside the registry holding the same a.txt."""
    folder = root / "artifacts" / arts["report"].id / "files" / "notes"
    outside = root.parent / "outside-dir"
    outside.mkdir()
    (outside / "a.txt").write_bytes(b"a")
    shutil.rmtree(folder)
    folder.symlink_to(outside)
    return arts["report"].id, lambda: (folder.unlink(), folder.mkdir(), (folder / "a.txt").write_bytes(b"a"))


def t_edited_lambdas_rehashed(root, arts):
    """lambdas.json edited, its sha256 and size updated in the manifest (issue 14 point 2)."""
    lam = arts["lam"]
    path = writable(root / "artifacts" / lam.id / "files" / LAMBDAS_FILE)
    original, manifest = path.read_bytes(), (root / "artifacts" / lam.id / "manifest.json").read_bytes()
    edited = original.replace(b"0.1", b"0.9")
    path.write_bytes(edited)
    rewrite_manifest(root, lam.id, lambda d: d["files"][LAMBDAS_FILE].update(sha256=sha(edited), size=len(edited)))
    return lam.id, lambda: (path.write_bytes(original), (root / "artifacts" / lam.id / "manifest.json").write_bytes(manifest))


def replace_file(root: Path, id: str, name: str, content: bytes) -> Callable[[], None]:
    path = writable(root / "artifacts" / id / "files" / name)
    original = path.read_bytes()
    path.write_bytes(content)
    return lambda: path.write_bytes(original)


def t_other_teacher(root, arts):
    """The teacher Parquet replaced by another valid teacher file (issue 14 point 2)."""
    return arts["traj"].id, replace_file(root, arts["traj"].id, TEACHER, teacher_bytes(root.parent, 1).read_bytes())


def t_corrupt_chunk(root, arts):
    path = root / "artifacts" / arts["chunk"].id / "files" / "images.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    return arts["chunk"].id, replace_file(root, arts["chunk"].id, "images.npy", bytes(data))


def t_truncated(root, arts):
    return arts["traj"].id, replace_file(root, arts["traj"].id, TEACHER, b"PAR1")


def t_fifo(root, arts):
    path = root / "artifacts" / arts["report"].id / "files" / "report.md"
    path.unlink()
    os.mkfifo(path)
    return arts["report"].id, lambda: (path.unlink(), path.write_bytes(b"# ok"))


def manifest_case(edit):
    def tamper(root, arts):
        path = root / "artifacts" / arts["report"].id / "manifest.json"
        original = path.read_bytes()
        writable(path).write_bytes(edit(json.loads(original)))
        return arts["report"].id, lambda: path.write_bytes(original)
    return tamper


def dumps_with(**changes):
    return lambda d: json.dumps({**d, **changes}).encode()


def t_moved(root, arts):
    """An artifact copied under another id's directory."""
    fake = "e" * 64
    shutil.copytree(root / "artifacts" / arts["model"].id, root / "artifacts" / fake)
    return fake, lambda: shutil.rmtree(root / "artifacts" / fake)


def t_unlisted(root, arts):
    extra = root / "artifacts" / arts["report"].id / "files" / "extra.bin"
    extra.write_bytes(b"not in the manifest")
    return arts["report"].id, extra.unlink


@dataclass(frozen=True)
class Case:
    name: str
    tamper: Callable
    message: str  # what `get`, the library read and `verify` say
    read: str = "bytes"  # the library read: 'bytes' (first file), 'lambdas', 'teacher', 'samples', 'dir'
    get_rc: int = 2  # `get` delivers the listed files of an artifact whose only fault is an unlisted extra


CASES = [
    Case("path traversal name", t_traversal, "unsafe artifact file name '../escape.txt'"),
    Case("absolute name", t_absolute, "unsafe artifact file name '/tmp/dode-absolute.txt'"),
    Case("backslash name", t_backslash, "unsafe artifact file name '..\\\\escape.txt'"),
    Case("symlinked file", t_symlink_file, "symbolic link", read="dir"),
    Case("symlinked directory", t_symlink_dir, "symbolic link", read="dir"),
    Case("edited lambdas, manifest rehashed", t_edited_lambdas_rehashed, "manifest does not hash to its id",
         read="lambdas"),
    Case("other valid teacher", t_other_teacher, "fails its sha256 check", read="teacher"),
    Case("corrupted sample chunk", t_corrupt_chunk, "fails its sha256 check", read="samples"),
    Case("truncated file", t_truncated, "fails its size check", read="teacher"),
    Case("fifo instead of a file", t_fifo, "not a regular file", read="dir"),
    Case("files is an empty list", manifest_case(dumps_with(files=[])), "'files' must be a non-empty object"),
    Case("non-dict file entry", manifest_case(lambda d: json.dumps({**d, "files": {"report.md": 5}}).encode()),
         "entry must be {sha256, size}"),
    Case("missing keys", manifest_case(lambda d: json.dumps({k: v for k, v in d.items() if k != "parents"}).encode()),
         "missing keys ['parents']"),
    Case("bad JSON", manifest_case(lambda d: b"{not json"), "manifest is not valid JSON"),
    Case("manifest is a list", manifest_case(lambda d: b"[1, 2]"), "manifest must be a JSON object"),
    Case("other manifest version", manifest_case(dumps_with(manifest_version=99)), "manifest version 99"),
    Case("artifact under another id", t_moved, "not its directory's"),
    Case("unlisted file in files/", t_unlisted, "unlisted file 'extra.bin'", read="dir", get_rc=0),
]


def library_read(reg: Registry, id: str, how: str) -> None:
    if how == "lambdas":
        load_lambdas(reg, id)
    elif how == "teacher":
        read_artifact(reg, id, TEACHER)
    elif how == "samples":
        list(iter_samples(reg, id))
    elif how == "dir":
        reg.local_dir(id)
    else:
        art = reg.get(id)
        reg.read_bytes(art, min(art.files))


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = dode_main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_tampering_is_caught_by_get_reads_and_verify(case, copy, capsys):
    root, arts, tmp = copy
    id, undo = case.tamper(root, arts)
    before, outside_before = snapshot(root), snapshot(tmp)

    rc, _, err = run_cli(capsys, "artifacts", "get", id, "--out", tmp / "out", "--registry", root)
    assert rc == case.get_rc and "Traceback" not in err, err
    if case.get_rc:
        assert case.message in err and not list((tmp / "out").glob("*"))  # nothing written: all or nothing
    with pytest.raises(ValueError) as read_err:
        library_read(Registry(root), id, case.read)
    assert case.message in str(read_err.value) and f"artifact {id[:12]}" in str(read_err.value)
    rc, _out, err = run_cli(capsys, "artifacts", "verify", "--registry", root)
    assert rc == 1 and case.message in err and "Traceback" not in err, err

    assert snapshot(root) == before  # reads and checks never change the registry
    new_outside = set(snapshot(tmp)) - set(outside_before)
    assert not [p for p in new_outside if p.split("/")[0] != "out"]  # nothing written outside --out
    assert not Path("/tmp/dode-absolute.txt").exists()
    if undo is not None:
        undo()
        assert run_cli(capsys, "artifacts", "verify", "--registry", root)[0] == 0


def test_republishing_repairs_a_damaged_artifact(copy):
    root, arts, _tmp = copy
    chunk = arts["chunk"]
    path = root / "artifacts" / chunk.id / "files" / "images.npy"
    good = path.read_bytes()
    writable(path).write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    reg = Registry(root)
    assert reg.verify(chunk.id) and reg.publish("samples", "m/chunk", {"images.npy": good}, params={"seeds": [0, 3]},
                                               parents=[arts["lam"]]).id == chunk.id
    assert reg.verify() == [] and path.read_bytes() == good


def test_a_corrupted_sample_chunk_is_recomputed_on_rerun(tmp_path):
    reg = Registry(tmp_path / "registry")
    job = SamplingJob("mixture-smooth", "euler", GridSpec("karras", 3).to_dict(), None, 4, 0, 2)
    art = run_sampling(job, reg, device="cpu")
    first = reg.get(json.loads(reg.read_bytes(art, "index.json"))["chunks"][0]["id"])
    path = tmp_path / "registry" / "artifacts" / first.id / "files" / "images.npy"
    good = path.read_bytes()
    writable(path).write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    with pytest.raises(ValueError, match="fails its sha256 check"):
        list(iter_samples(reg, art))
    computed = []
    again = run_sampling(job, Registry(reg.uri), device="cpu", on_chunk=lambda c, a, now: computed.append(a.id))
    assert again.id == art.id and computed[0] == first.id and path.read_bytes() == good
    assert Registry(reg.uri).verify() == []


def test_lambdas_fitted_on_another_model_are_refused_unless_overridden(tmp_path, capsys):
    gaussian = load_model("gaussian")
    grid = GridSpec.for_nfe("karras", "euler", 3)
    sigmas = grid.sigmas(gaussian.denoiser).tolist()
    reg = Registry(tmp_path / "registry")
    other = save_lambdas(reg, Lambdas([0.1, 0.0, -0.1], "euler", sigmas, model="0" * 64), "mixture/euler/nfe3")
    own = save_lambdas(reg, Lambdas([0.1, 0.0, -0.1], "euler", sigmas, model=gaussian.fingerprint), "gauss/euler/nfe3")
    assert other.params["model_fingerprint"] == "0" * 64
    with pytest.raises(ValueError, match=f"fitted on model {'0' * 16}, not on the model being sampled "
                                         f"\\({gaussian.fingerprint[:16]}\\).*--allow-other-model"):
        load_lambdas(reg, other.id, model=gaussian.fingerprint)
    assert load_lambdas(reg, other.id, model=gaussian.fingerprint, allow_other_model=True).values == (0.1, 0.0, -0.1)
    assert load_lambdas(reg, own.id, model=gaussian.fingerprint).model == gaussian.fingerprint
    argv = ["sample", "--model", "gaussian", "--nfe", "3", "--sampling-n-samples", "2", "--sampling-batch-size", "2",
            "--device", "cpu", "--registry", reg.uri, "--lambdas", other.id[:10]]
    before = snapshot(tmp_path / "registry")
    rc, _, err = run_cli(capsys, *argv)
    assert rc == 2 and "fitted on model" in err and "--allow-other-model" in err and "Traceback" not in err
    assert {k: v for k, v in snapshot(tmp_path / "registry").items() if not k.startswith("staging")} == \
        {k: v for k, v in before.items() if not k.startswith("staging")}
    rc, _out, err = run_cli(capsys, *argv, "--allow-other-model")
    assert rc == 0, err
    assert Registry(reg.uri).verify() == []

    # Issue 14 point 2: lambdas edited with their sha256 and size updated in the manifest are refused.
    path = writable(tmp_path / "registry" / "artifacts" / own.id / "files" / LAMBDAS_FILE)
    edited = path.read_bytes().replace(b"0.1", b"0.7")
    path.write_bytes(edited)
    rewrite_manifest(tmp_path / "registry", own.id, lambda d: d["files"][LAMBDAS_FILE].update(sha256=sha(edited),
                                                                                              size=len(edited)))
    rc, _, err = run_cli(capsys, *argv[:-1], own.id)
    assert rc == 2 and f"artifact {own.id[:12]}" in err and "manifest does not hash to its id" in err


@pytest.mark.parametrize("action", [["list"], ["verify"], ["show", "abc"], ["get", "abc", "--out", "OUT"], ["gc"]])
def test_a_missing_registry_or_a_file_in_its_place_is_one_clear_error(action, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a registry")
    argv = ["artifacts", *[str(tmp_path / "out") if a == "OUT" else a for a in action]]
    rc, _out, err = run_cli(capsys, *argv, "--registry", tmp_path / "no" / "such" / "path")
    assert rc == 2 and "does not exist" in err and "Traceback" not in err, err
    assert not (tmp_path / "no").exists()
    rc, _, err = run_cli(capsys, *argv, "--registry", blocker)
    assert rc == 2 and "is a file, not a directory" in err and "Traceback" not in err, err
    assert blocker.read_text() == "not a registry"


def test_get_writes_only_inside_out_and_overwrites_only_with_force(copy, capsys):
    root, arts, tmp = copy
    report = arts["report"]
    out = tmp / "out"
    assert run_cli(capsys, "artifacts", "get", report.id, "--out", out, "--registry", root)[0] == 0
    (out / "report.md").write_bytes(b"mine")
    rc, _, err = run_cli(capsys, "artifacts", "get", report.id, "--out", out, "--registry", root)
    assert rc == 2 and "exists with other content" in err and "--force" in err
    assert (out / "report.md").read_bytes() == b"mine"
    assert run_cli(capsys, "artifacts", "get", report.id, "--out", out, "--registry", root, "--force")[0] == 0
    assert (out / "report.md").read_bytes() == b"# ok"

    elsewhere, planted = tmp / "elsewhere", tmp / "planted"
    elsewhere.mkdir()
    planted.mkdir()
    (planted / "notes").symlink_to(elsewhere)  # a link in --out must not lead the download outside it
    rc, _, err = run_cli(capsys, "artifacts", "get", report.id, "--out", planted, "--registry", root, "--force")
    assert rc == 2 and "symbolic link or a file" in err and list(elsewhere.iterdir()) == []
    assert not (planted / "report.md").exists()


def dead_area(staging: Path, size: int) -> Path:
    """A staging area whose writer died: its lock file exists but nobody holds it."""
    with StagingArea(staging) as area:
        (area.path / "x.partial").write_bytes(b"\0" * size)
        keep = staging / "dead"
        shutil.copytree(area.path, keep)
    (staging / ("dead" + LOCK_SUFFIX)).touch()
    return keep


def test_stale_staging_is_reported_until_gc_and_live_writers_are_left_alone(copy, capsys):
    root, _, _ = copy
    staging = root / "staging"
    dead = dead_area(staging, 1 << 20)
    live_fd = hold_lock(staging / ("live" + LOCK_SUFFIX))
    (staging / "live").mkdir()
    (staging / "live" / "y.partial").write_bytes(b"1")
    old = staging / "probe-legacy"
    old.write_bytes(b"")
    os.utime(old, (0, 0))  # a loose file from an older dode, a long time ago
    try:
        rc, _, err = run_cli(capsys, "artifacts", "verify", "--registry", root)
        assert rc == 1 and f"stale partial {dead} (1048576 bytes" in err and "probe-legacy" in err
        assert f"{staging / 'live'} (" not in err
        rc, out, _ = run_cli(capsys, "artifacts", "gc", "--registry", root)
        assert rc == 0 and out.startswith("2 stale partial file(s) removed")
        assert sorted(p.name for p in staging.iterdir()) == ["live", "live" + LOCK_SUFFIX]
        assert run_cli(capsys, "artifacts", "verify", "--registry", root)[0] == 0
    finally:
        os.close(live_fd)
    dead_area(staging, 10)
    Registry(root).publish("report", "next", {"a": b"1"})  # the next writer cleans up too
    assert not (staging / "dead").exists() and not (staging / "live").exists()


WRITER = """
import sys, time
import numpy as np
from dode.store.trajectory import TrajectoryWriter
w = TrajectoryWriter(sys.argv[1], (1, 2, 2), {"sigmas": [1.0, 0.0]})
w.write_step(0, np.zeros((4, 1, 2, 2), np.float32))
print("written", flush=True)
time.sleep(600)
"""


def test_a_killed_teacher_writer_leaves_a_partial_that_the_next_writer_removes(tmp_path):
    with StagingArea(tmp_path / "staging") as area:
        target = area.path / TEACHER
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline().strip() == "written"
            partial = next(area.path.glob(f".{TEACHER}.*.partial"))
            with TrajectoryWriter(target, (1, 2, 2), {"sigmas": [1.0, 0.0]}) as w:
                w.write_step(0, torch.zeros(1, 1, 2, 2))
            assert partial.exists()  # a live writer's partial is left alone
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        with TrajectoryWriter(target, (1, 2, 2), {"sigmas": [1.0, 0.0]}) as w:
            assert not partial.exists()  # its writer is gone: the next writer of the file removes it
            w.write_step(0, torch.zeros(1, 1, 2, 2))
        assert [p.name for p in area.path.iterdir()] == [TEACHER]
    assert list((tmp_path / "staging").iterdir()) == []


def test_intact_is_what_a_resume_checks_before_trusting_a_cached_id(copy):
    root, arts, _ = copy
    reg = Registry(root)
    assert all(reg.intact(a.id) for a in arts.values()) and not reg.intact("0" * 64) and not reg.intact("../x")
    chunk = root / "artifacts" / arts["chunk"].id / "files" / "images.npy"
    writable(chunk).write_bytes(b"x")
    shutil.rmtree(root / "artifacts" / arts["report"].id)
    assert not reg.intact(arts["chunk"].id) and not reg.intact(arts["report"].id) and reg.intact(arts["lam"].id)


BAD_LAMBDAS = {
    "extra key": b'{"schema_version": 2, "values": [0.1], "solver": "euler", "sigmas": [1.0, 0.0], "x": 1}',
    "no values": b'{"schema_version": 2, "solver": "euler", "sigmas": [1.0, 0.0]}',
    "values is 5": b'{"schema_version": 2, "values": 5, "solver": "euler", "sigmas": [1.0, 0.0]}',
    "a JSON list": b"[0.1, 0.2]",
    "NaN": b'{"schema_version": 2, "values": [NaN], "solver": "euler", "sigmas": [1.0, 0.0]}',
    "1e300": b'{"schema_version": 2, "values": [1e300], "solver": "euler", "sigmas": [1.0, 0.0]}',
    "not JSON": b"values = [0.1]",
    "not UTF-8": b"\xff\xfe",
}


@pytest.mark.parametrize("content", BAD_LAMBDAS.values(), ids=list(BAD_LAMBDAS))
def test_malformed_lambdas_in_a_sound_artifact_are_one_clear_error(content, tmp_path, capsys):
    reg = Registry(tmp_path / "registry")
    art = reg.publish("lambdas", "bad", {LAMBDAS_FILE: content})
    with pytest.raises(ValueError, match="lambdas|JSON|utf-8"):
        load_lambdas(reg, art.id)
    before = snapshot(tmp_path / "registry")
    rc, _, err = run_cli(capsys, "sample", "--model", "gaussian", "--nfe", "1", "--sampling-n-samples", "2", "--device", "cpu",
                         "--lambdas", art.id, "--registry", tmp_path / "registry")
    assert rc == 2 and "Traceback" not in err and err.count("\n") == 1, err
    after = snapshot(tmp_path / "registry")
    assert {k: v for k, v in after.items() if "staging" not in k} == {k: v for k, v in before.items() if "staging" not in k}
    assert Registry(reg.uri).verify() == []
