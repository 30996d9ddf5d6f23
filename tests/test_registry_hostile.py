"""Hostile registries and output folders (issue 20): links, forged manifests and indexes, partial downloads,
non-finite models, options checked before work. Each case asserts the message, the exit code, and that
nothing outside its place was written, deleted or followed: the data behind a link is byte for byte as it was.
"""

from __future__ import annotations

import io
import json
import math
import os
import tracemalloc
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from test_registry_integrity import forge, pristine, run_cli, snapshot, writable  # noqa: F401 - fixtures

from dode.common.bounded import load_json
from dode.models import MODELS
from dode.store.fetch import HIDDEN
from dode.store.manifest import MANIFEST_VERSION, artifact_id, printable
from dode.store.registry import Registry
from dode.store.staging import LOCK_SUFFIX, StagingArea


@pytest.fixture
def copy(pristine, tmp_path):  # noqa: F811 - the integrity suite's copy, under its own name here
    import shutil

    src, arts = pristine
    root = tmp_path / "registry"
    shutil.copytree(src / "registry", root, symlinks=True)
    return root, arts, tmp_path


def precious(tmp: Path) -> Path:
    """A user's folder that a link points to: old files and lock files a collector must never touch."""
    folder = tmp / "precious"
    folder.mkdir()
    for name in ("old.bin", "x.lock", "0" * 32 + LOCK_SUFFIX, "000001.png"):
        (folder / name).write_bytes(b"keep " + name.encode())
        os.utime(folder / name, (0, 0))
    (folder / ("0" * 32)).mkdir()
    return folder


def forged(root: Path, kind: str, key: str, files: dict[str, bytes], params: dict | None = None,
           parents: list[str] = ()) -> str:
    """A self-consistent artifact (manifest hashing to its id) with any content: what write access can make."""
    hashes = {n: __import__("hashlib").sha256(c).hexdigest() for n, c in files.items()}
    id = artifact_id(kind, key, params or {}, list(parents), hashes)
    folder = root / "artifacts" / id
    for name, content in files.items():
        (folder / "files" / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / "files" / name).write_bytes(content)
    manifest = {"manifest_version": MANIFEST_VERSION, "id": id, "kind": kind, "key": key, "params": params or {},
                "parents": list(parents), "provenance": {}, "created": "2024-01-01T00:00:00+00:00",
                "files": {n: {"sha256": hashes[n], "size": len(c)} for n, c in files.items()}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return id


# Links: never followed for a write or a delete, reported by verify.
def test_a_staging_link_is_refused_by_gc_and_publish_and_reported(copy, capsys):
    root, _, tmp = copy
    target = precious(tmp)
    before = snapshot(target)
    os.rename(root / "staging", tmp / "old-staging") if (root / "staging").exists() else None
    (root / "staging").symlink_to(target)
    rc, _, err = run_cli(capsys, "artifacts", "gc", "--registry", root)
    assert rc == 2 and "is a symbolic link" in err and "Traceback" not in err
    with pytest.raises(ValueError, match="is a symbolic link"):
        Registry(root).publish("report", "next", {"a": b"1"})
    rc, _, err = run_cli(capsys, "artifacts", "verify", "--registry", root)
    assert rc == 1 and "staging:" in err and "is a symbolic link" in err
    assert snapshot(target) == before


@pytest.mark.parametrize("where", ["artifacts", "artifact folder", "files folder"])
def test_a_link_inside_the_tree_is_reported_and_never_written_through(where, copy, capsys):
    root, arts, tmp = copy
    model = arts["model"].id
    place = {"artifacts": root / "artifacts", "artifact folder": root / "artifacts" / model,
             "files folder": root / "artifacts" / model / "files"}[where]
    real = tmp / "moved"
    os.rename(place, real)
    place.symlink_to(real)
    before = snapshot(real)
    rc, _, err = run_cli(capsys, "artifacts", "verify", "--registry", root)
    assert rc == 1 and ("symbolic link" in err) and "Traceback" not in err, err
    with pytest.raises(ValueError):  # republishing cannot write through the link either
        Registry(root).publish("model", "m", {"model.json": b'{"name": "m"}'}, params={"fingerprint": "f" * 64})
    assert snapshot(real) == before


def test_a_registry_reached_through_a_link_works(copy, capsys):
    root, arts, tmp = copy
    (tmp / "via").symlink_to(root)
    reg = Registry(tmp / "via")
    art = reg.publish("report", "through-a-link", {"a.txt": b"a"})
    assert reg.read_bytes(art, "a.txt") == b"a" and reg.verify() == []
    rc, out, _ = run_cli(capsys, "artifacts", "list", "--registry", tmp / "via")
    assert rc == 0 and art.id in out and arts["model"].id in out


# Output folders.
@pytest.mark.parametrize("case", ["out is a link", "parts is a link", "out inside the registry", "png is a link",
                                  "other png without --force"])
def test_output_folders_are_written_only_in_place(case, copy, capsys):
    root, _, tmp = copy
    target = precious(tmp)
    before = snapshot(target)
    buf = io.BytesIO()
    np.save(buf, np.full((2, 1, 4, 4), 7, np.uint8))
    chunk = forged(root, "samples", "c", {"images.npy": buf.getvalue()}, {"seeds": [0, 2]})
    index = {"schema_version": 1, "chunks": [{"id": chunk, "seeds": [0, 2]}]}
    job = forged(root, "samples", "job", {"index.json": json.dumps(index).encode()}, {"seeds": [0, 2]}, [chunk])
    out, argv = tmp / "out", ["artifacts", "get", job, "--registry", root]
    out.mkdir()
    if case == "out is a link":
        out.rmdir()
        out.symlink_to(target)
        argv += ["--out", out]
    elif case == "parts is a link":
        (out / "parts").symlink_to(target)
        argv += ["--out", out, "--format", "files"]
    elif case == "out inside the registry":
        argv += ["--out", root / "artifacts" / job / "files"]
    elif case == "png is a link":
        (out / "000001.png").symlink_to(target / "000001.png")
        argv += ["--out", out, "--force"]
    else:
        (out / "000001.png").write_bytes(b"a user's picture")
        argv += ["--out", out]
    registry_before = snapshot(root)
    rc, _, err = run_cli(capsys, *argv)
    assert snapshot(target) == before and snapshot(root) == registry_before
    if case == "png is a link":  # --force replaces the link itself, never the file it points to
        assert rc == 0 and not (out / "000001.png").is_symlink() and (out / "000000.png").is_file()
        return
    assert rc == 2 and "Traceback" not in err, err
    assert {"out is a link": "symbolic link", "parts is a link": "symbolic link", "out inside the registry":
            "inside the registry", "other png without --force": "--force"}[case] in err
    if case == "other png without --force":
        assert (out / "000001.png").read_bytes() == b"a user's picture" and not (out / "000000.png").exists()
        assert run_cli(capsys, *argv, "--force")[0] == 0 and (out / "000001.png").read_bytes() != b"a user's picture"


def test_sample_png_dir_keeps_other_pngs_without_force(tmp_path, capsys):
    png = tmp_path / "png"
    png.mkdir()
    (png / "000001.png").write_bytes(b"mine")
    argv = ["sample", "--model", "gaussian", "--nfe", "2", "--sampling-n-samples", "2", "--sampling-batch-size", "2",
            "--quiet", "--registry", tmp_path / "registry", "--png-dir", png]
    rc, _, err = run_cli(capsys, *argv)
    assert rc == 2 and "--force" in err and (png / "000001.png").read_bytes() == b"mine"
    assert run_cli(capsys, *argv, "--force")[0] == 0 and (png / "000001.png").read_bytes()[:4] == b"\x89PNG"
    rc, _, err = run_cli(capsys, *argv[:-1], tmp_path / "registry" / "artifacts")
    assert rc == 2 and "inside the registry" in err


# Hostile manifests and indexes.
def test_a_deeply_nested_manifest_is_one_broken_artifact(copy, capsys):
    root, arts, _ = copy
    bomb = "e" * 64
    (root / "artifacts" / bomb).mkdir()
    (root / "artifacts" / bomb / "manifest.json").write_bytes(b"[" * 200_000 + b"]" * 200_000)
    rc, out, err = run_cli(capsys, "artifacts", "list", "--registry", root)
    assert rc == 0 and arts["model"].id in out and "1 artifact(s) with a broken manifest" in err
    rc, _, err = run_cli(capsys, "artifacts", "verify", "--registry", root)
    assert rc == 1 and f"artifact {bomb[:12]}: manifest nests deeper than" in err and "Traceback" not in err
    assert run_cli(capsys, "artifacts", "get", arts["model"].id, "--out", root.parent / "o", "--registry", root)[0] == 0


@pytest.mark.parametrize("raw, message", [
    (b"{" * 65 + b"}" * 65, "nests deeper than 64"),
    (b'{"a": "' + b"[" * 500 + b'"}', None),  # brackets inside a string are not nesting
    (b" " * (16 << 20) + b"{}", "larger than"),
    (b"\xff{}", "not valid JSON"),
])
def test_registry_json_is_parsed_within_bounds(raw, message):
    if message is None:
        assert load_json(raw, "x") == {"a": "[" * 500}
    else:
        with pytest.raises(ValueError, match=message):
            load_json(raw, "x")


def test_keys_and_names_reach_the_terminal_escaped(copy, capsys):
    root, _, _ = copy
    key = "ok\n" + "f" * 64 + "  model           fake\x1b[2J\u202e"
    id = forged(root, "report", key, {"a": b"a"})
    rc, out, _ = run_cli(capsys, "artifacts", "list", "--registry", root)
    assert rc == 0 and "\x1b" not in out and "\u202e" not in out and len(out.splitlines()) == 6
    assert printable(key) in out
    rc, _, err = run_cli(capsys, "artifacts", "get", id[:10] + "\x1b[31m", "--out", root.parent / "o",
                         "--registry", root)
    assert rc == 2 and "\x1b" not in err and err.count("\n") == 1
    with pytest.raises(ValueError, match="one-line string"):
        Registry(root).publish("report", "a\x1bb", {"a": b"a"})


def test_names_the_file_system_cannot_hold_are_reported_not_crashed_on(copy, capsys):
    root, arts, _ = copy
    long = forge(root, "ok.txt")
    manifest = root / "artifacts" / long / "manifest.json"
    data = json.loads(manifest.read_text())
    data["files"] = {"x" * 300: data["files"]["ok.txt"]}
    data["id"] = long2 = artifact_id("report", "forged", {}, [], {"x" * 300: data["files"]["x" * 300]["sha256"]})
    (root / "artifacts" / long2 / "files").mkdir(parents=True)
    (root / "artifacts" / long2 / "manifest.json").write_text(json.dumps(data))
    writable(root / "artifacts" / arts["report"].id / "files" / "report.md").write_bytes(b"# edited")
    rc, _, err = run_cli(capsys, "artifacts", "verify", "--registry", root)
    assert rc == 1 and "too long" in err and "Traceback" not in err
    assert f"artifact {arts['report'].id[:12]}: file 'report.md' fails" in err  # it went on past the long name
    rc, _, err = run_cli(capsys, "artifacts", "get", long2, "--out", root.parent / "o", "--registry", root)
    assert rc == 2 and "longer than this file system holds" in err


@pytest.mark.parametrize("seeds, chunk_seeds", [
    ([0, 2], "0-2"), ([0, 2], [0]), ([0, 2], [2, 0]), ([0, 2], [0, 2 ** 62]), ([0, 2], [True, 2]),
    ([0, 2 ** 62], [0, 2 ** 62]),
])
@pytest.mark.parametrize("fmt", ["png", "npz"])
def test_forged_sample_indexes_are_refused_before_any_allocation(seeds, chunk_seeds, fmt, copy, capsys):
    root, _, tmp = copy
    buf = io.BytesIO()
    np.save(buf, np.zeros((2, 1, 4, 4), np.uint8))
    chunk = forged(root, "samples", "c", {"images.npy": buf.getvalue()}, {"seeds": [0, 2]})
    index = {"schema_version": 1, "chunks": [{"id": chunk, "seeds": chunk_seeds}]}
    job = forged(root, "samples", "job", {"index.json": json.dumps(index).encode()}, {"seeds": seeds}, [chunk])
    tracemalloc.start()
    rc, _, err = run_cli(capsys, "artifacts", "get", job, "--out", tmp / "out", "--format", fmt, "--registry", root)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert rc == 2 and "Traceback" not in err and "inconsistent" in err, err
    assert peak < 64 << 20 and not list((tmp / "out").glob("*"))


def test_a_forged_npy_header_is_refused_before_allocating(copy, capsys):
    root, _, tmp = copy
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|u1", "fortran_order": False, "shape": (2 ** 40, 1, 8, 8)})
    chunk = forged(root, "samples", "c", {"images.npy": buf.getvalue() + b"\0" * 64}, {"seeds": [0, 1]})
    rc, _, _ = run_cli(capsys, "artifacts", "get", chunk, "--out", tmp / "out", "--registry", root)
    assert rc == 0  # a chunk is a plain artifact: its files are delivered as they are
    from dode.store.samples import iter_samples

    with pytest.raises(ValueError, match="declares uint8"):
        list(iter_samples(Registry(root), chunk))


def test_a_file_and_a_folder_of_one_name_are_refused_before_anything_is_written(copy, capsys):
    root, _, tmp = copy
    with pytest.raises(ValueError, match="also a folder"):
        Registry(root).publish("report", "clash", {"a": b"1", "a/b": b"2"})
    id = forged(root, "report", "clash", {"b/c": b"2"})
    data = json.loads((root / "artifacts" / id / "manifest.json").read_text())
    rc, _, err = run_cli(capsys, "artifacts", "verify", id, "--registry", root)
    assert rc == 0
    data["files"]["b"] = data["files"]["b/c"]
    hashes = {n: e["sha256"] for n, e in data["files"].items()}
    data["id"] = clash = artifact_id("report", "clash", {}, [], hashes)
    (root / "artifacts" / clash).mkdir()
    (root / "artifacts" / clash / "manifest.json").write_text(json.dumps(data))
    rc, _, err = run_cli(capsys, "artifacts", "get", clash, "--out", tmp / "out", "--registry", root)
    assert rc == 2 and "also a folder" in err and not (tmp / "out").exists()


# Provenance, partial work.
def test_show_marks_provenance_and_created_unverified(copy, capsys):
    root, arts, _ = copy
    rc, out, _ = run_cli(capsys, "artifacts", "show", arts["model"].id, "--registry", root)
    head, rest = out.split("unverified", 1)
    assert rc == 0 and '"created"' not in head and '"provenance"' not in head
    assert '"created"' in rest.split("lineage:")[0] and '"provenance"' in rest.split("lineage:")[0]


def test_an_interrupted_get_is_cleaned_by_the_next_get_and_by_gc(copy, capsys):
    root, arts, tmp = copy
    out = tmp / "out"
    for _ in range(2):
        with StagingArea(out / HIDDEN) as area:  # a download killed half-way: its area and lock stay behind
            (area.path / "0").write_bytes(b"partial")
            os.rename(area.path, out / HIDDEN / "dead")
        (out / HIDDEN / ("dead" + LOCK_SUFFIX)).touch()
        argv = ["artifacts", "get", arts["model"].id, "--out", out, "--registry", root]
        if _ == 0:
            assert run_cli(capsys, *argv)[0] == 0
        else:
            rc, _, err = run_cli(capsys, "artifacts", "gc", "--registry", root, "--out", out)
            assert rc == 0 and "dead" in err
        assert sorted(p.name for p in out.iterdir()) == ["model.json"]


# The CLI contract: non-finite model output, `dode run` options.
def test_a_model_returning_nan_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    gaussian = MODELS["gaussian"]
    monkeypatch.setitem(MODELS, "gaussian", lambda device: replace(
        gaussian(device), denoiser=lambda x, sigma: torch.full_like(x, math.nan)))
    rc, out, err = run_cli(capsys, "sample", "--model", "gaussian", "--nfe", "2", "--sampling-n-samples", "2",
                           "--quiet", "--registry", tmp_path / "registry")
    assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1 and out == ""


@pytest.mark.parametrize("options, message", [
    (["--fit-objective", "final", "--fit-options", "iterations=-1"], "iterations: Input should be greater than or equal"),
    (["--fit-objective", "final", "--fit-options", "lr_lambdas=nan"], "lr_lambdas: Input should be a valid number"),
    (["--fit-objective", "final", "--fit-options", "lr_lambdas=NaN"], "lr_lambdas: Input should be a valid number"),
    (["--fit-objective", "final", "--fit-options", "init=best"], "init: Input should be 'timesteps', 'zero' or"),
    (["--fit-objective", "step", "--fit-options", "iterations=3"], "has no option(s) ['iterations']"),
    (["--teacher-first-seed", "-1"], "teacher.first_seed: Input should be greater than or equal to 0"),
])
def test_dode_run_refuses_bad_options_before_any_work(options, message, tmp_path, capsys):
    rc, _, err = run_cli(capsys, "run", "distill", "--teacher-factor", "2", "--teacher-n-samples", "4", *options,
                         "--registry", tmp_path / "registry")
    assert rc == 2 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "registry").exists()  # no teacher computed, nothing published
