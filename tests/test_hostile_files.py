"""Hostile files stay harmless (issue 27): bounded parsing of every JSON a file or option brings, values checked
where they enter, one output-folder rule for every download format, disk full, registries that cannot hold.

Each case asserts one line and exit 2 (or one ValueError from the library), no traceback, and that nothing
outside its place was written: the registry verifies, a link's target is byte for byte as it was.
"""

from __future__ import annotations

import errno
import json
import math
import re
import shutil
import subprocess
import sys
from base64 import b64encode
from pathlib import Path

import numpy as np
import pytest
import torch
from test_registry_integrity import run_cli, snapshot

from dode.common.bounded import MAX_INT, check_size, load_json, load_yaml
from dode.core.correction import MAX_ABS_LAMBDA, Lambdas, lambda_values
from dode.core.gaussian import Gaussian, Moments
from dode.models import EMBEDDED_MODEL_DIR, load_model
from dode.store.gaussians import GAUSSIAN_FILE, load_gaussian, save_gaussian
from dode.store.lambdas import save_lambdas
from dode.store.registry import Registry

DEEP = "[" * 5000 + "]" * 5000


def one_line(rc: int, err: str, phrase: str) -> None:
    assert rc == 2 and phrase in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


# The bounded reader: what would exhaust the parser or the machine is refused before use.
@pytest.mark.parametrize("doc, phrase", [
    ('{"a": ' + DEEP + "}", "nests deeper than 64 levels"),
    ('{"rest": 1' + "0" * 400 + "}", "beyond 64 bits"),
    ('{"rest": ' + str(MAX_INT + 1) + "}", "beyond 64 bits"),
    ('{"a": NaN}', "not a finite number"),
    ('{"a": -Infinity}', "not a finite number"),
    ("[1e400]", "beyond float64's range"),
    ('{"a": 1', "not valid JSON"),
])
def test_hostile_json_is_one_value_error(doc, phrase):
    with pytest.raises(ValueError, match=phrase):
        load_json(doc.encode(), "doc")


def test_bounded_json_reads_plain_documents_and_refuses_size_unread(tmp_path):
    assert load_json(b'{"a": [1, -2.5, "[[["], "b": null}', "doc") == {"a": [1, -2.5, "[[["], "b": None}
    big = tmp_path / "big.json"
    big.write_bytes(b"[" + b"0," * 600 + b"0]")
    with pytest.raises(ValueError, match="larger than 1000 bytes"):
        load_json(big, max_bytes=1000)


@pytest.mark.parametrize("doc, phrase", [
    ("a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n"
                                                        for p, c in zip("abcdefgh", "bcdefghi")),
     "expands to more than 1,000,000 values"),
    (DEEP, "nests deeper than 64 levels"),
    ("\n".join("  " * i + "k:" for i in range(200)) + " 1\n", "nests deeper than 64 levels"),
    ("a: .nan\n", "not a finite number"),
    ("a: 1" + "0" * 30 + "\n", "beyond 64 bits"),
    ("a: [1\n", "not valid YAML"),
])
def test_hostile_yaml_is_one_value_error(doc, phrase):
    with pytest.raises(ValueError, match=phrase):
        load_yaml(doc, "doc")
    assert load_yaml("a:\n  b: &b [1, 2.5]\nc: *b\n") == {"a": {"b": [1, 2.5]}, "c": [1, 2.5]}


def test_a_size_from_a_file_is_refused_with_its_bound():
    with pytest.raises(ValueError, match=r"in 1\.\.1,000 \(the bound\), got 2000"):
        check_size("n", 2000, 1000, "the bound")
    with pytest.raises(ValueError, match="got True"):
        check_size("n", True, 1000, "the bound")


# Model folders: configs read bounded, sizes bounded by the machine, choices listed.
def model_folder(tmp_path: Path, part: str, edit) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(EMBEDDED_MODEL_DIR, folder)
    path = folder / part
    text = edit(json.loads(path.read_text()))
    path.write_text(text if isinstance(text, str) else json.dumps(text))
    return folder


MODEL_CASES = [  # (name, part, edit of its config, phrase)
    ("nested unet config", "unet/config.json", lambda c: '{"a": ' + DEEP + "}", "nests deeper than 64 levels"),
    ("sample_size 100000", "unet/config.json", lambda c: {**c, "sample_size": 100000}, "this machine holds at most"),
    ("num_train_timesteps 2e9", "scheduler/scheduler_config.json", lambda c: {**c, "num_train_timesteps": 2 * 10**9},
     "'num_train_timesteps' must be an integer in 1..1,000,000"),
    ("beta_schedule nope", "scheduler/scheduler_config.json", lambda c: {**c, "beta_schedule": "nope"},
     "unknown beta_schedule 'nope'; choose one of ['linear', 'scaled_linear'"),
    ("beta_end 5", "scheduler/scheduler_config.json", lambda c: {**c, "beta_end": 5}, "numbers in [0, 1]"),
    ("nested model_index", "model_index.json", lambda c: '{"a": ' + DEEP + "}", "nests deeper than 64 levels"),
    ("channels 2**40", "unet/config.json", lambda c: {**c, "block_out_channels": [2**40]}, "block_out_channels"),
]


@pytest.mark.parametrize("case", MODEL_CASES, ids=[c[0] for c in MODEL_CASES])
def test_a_hostile_model_folder_is_refused_before_diffusers_reads_it(case, tmp_path, capsys):
    _, part, edit, phrase = case
    folder = model_folder(tmp_path, part, edit)
    with pytest.raises(ValueError, match=re_escape(phrase)):
        load_model(str(folder))
    rc, out, err = run_cli(capsys, "gaussian", "--model", folder, "--n-samples", "4", "--registry", tmp_path / "registry")
    one_line(rc, err, phrase)
    assert out == "" and Registry(tmp_path / "registry").list() == []


def re_escape(text: str) -> str:
    return re.escape(text)


@pytest.mark.parametrize("edit, phrase", [
    ({"num_train_timesteps": 2 * 10**9}, "'num_train_timesteps' must be an integer in 1..1,000,000"),
    ({"beta_schedule": "nope"}, "unknown beta_schedule 'nope'"),
])
def test_get_format_diffusers_refuses_a_forged_model_parent(edit, phrase, tmp_path, capsys):
    reg = Registry(tmp_path / "registry")
    config = {**json.loads((EMBEDDED_MODEL_DIR / "scheduler" / "scheduler_config.json").read_text()), **edit}
    model = reg.publish("model", "forged", {"scheduler/scheduler_config.json": json.dumps(config).encode()})
    lam = save_lambdas(reg, Lambdas([0.1, 0.2], "euler", [2.0, 1.0, 0.0]), "forged/euler", parents=[model])
    rc, _, err = run_cli(capsys, "artifacts", "get", lam.id, "--format", "diffusers", "--out", tmp_path / "out",
                         "--registry", reg.uri)
    one_line(rc, err, phrase)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    assert reg.verify() == []


# Lambdas: one rule wherever they are read.
@pytest.mark.parametrize("values", [[0.1, math.nan, 0.3], [0.1, 1e300, 0.3], [math.inf], [-2 * MAX_ABS_LAMBDA]])
def test_lambda_values_are_finite_and_bounded_everywhere(values, tmp_path):
    with pytest.raises(ValueError, match="lambdas must be finite"):
        lambda_values(values)
    with pytest.raises(ValueError, match="lambdas must be finite"):
        Lambdas(values, "euler", [3.0, 2.0, 1.0, 0.0][: len(values) + 1])
    assert lambda_values([0.1, -0.2]) == (0.1, -0.2)


@pytest.mark.parametrize("bad", ["[0.1, NaN, 0.3]", "[0.1, 1e300, 0.3]"])
def test_a_saved_scheduler_with_corrupt_lambdas_does_not_load(bad, tmp_path):
    from diffusers import DDPMScheduler

    from dode.integrations.diffusers.scheduler import DODEScheduler

    base = DDPMScheduler.from_pretrained(EMBEDDED_MODEL_DIR, subfolder="scheduler")
    DODEScheduler.from_scheduler(base, solver="euler", nfe=3).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "scheduler_config.json").read_text())
    config.update(grid=None, sigmas=[10.0, 2.0, 0.5, 0.0], lambdas="LAMBDAS")
    (tmp_path / "scheduler_config.json").write_text(json.dumps(config).replace('"LAMBDAS"', bad))
    with pytest.raises(ValueError, match="lambdas must be finite"):
        DODEScheduler.from_pretrained(tmp_path)


# Gaussians: bounded JSON, orthonormal basis, file and params agree.
@pytest.fixture
def gauss_registry(tmp_path):
    model = load_model("gaussian")
    x = torch.randn(300, *model.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    gauss = Gaussian.fit(x, model=model.fingerprint)
    reg = Registry(tmp_path / "registry")
    good = save_gaussian(reg, gauss, "gaussian/gaussian/test", params={"model": "gaussian"})
    return reg, gauss, good, model


def forge_gaussian(reg: Registry, data: dict | bytes, params: dict) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return reg.publish("gaussian", "forged", {GAUSSIAN_FILE: raw}, params=params).id


def test_forged_gaussians_are_refused(gauss_registry, tmp_path, capsys):
    reg, gauss, good, model = gauss_registry
    other = load_model("mixture-smooth").fingerprint
    params = dict(good.params)
    eye3 = 3 * np.eye(gauss.dim).astype("<f8")  # full rank here: a (d, d) basis
    scaled = {**gauss.to_dict(), "basis": {"shape": [gauss.dim] * 2, "float64_le": b64encode(eye3.tobytes()).decode()}}
    blank = {**gauss.to_dict(), "model": ""}
    cases = {
        "orthonormal columns": forge_gaussian(reg, scaled, params),
        "disagrees with its params on ['model_fingerprint'": forge_gaussian(reg, blank, {**params,
                                                                                         "model_fingerprint": other}),
        "nests deeper than 64 levels": forge_gaussian(reg, b'{"a": ' + DEEP.encode() + b"}", params),
        "beyond 64 bits": forge_gaussian(reg, json.dumps(gauss.to_dict()).replace(
            f'"rest": {json.dumps(gauss.rest)}', '"rest": 1' + "0" * 400).encode(), params),
    }
    for phrase, id in cases.items():
        with pytest.raises(ValueError, match=re_escape(phrase)):
            load_gaussian(reg, id, model=model.fingerprint)
        rc, out, err = run_cli(capsys, "sample", "--model", "gaussian", "--first-step", "analytic", "--gaussian", id,
                               "--nfe", "2", "--sampling-n-samples", "2", "--quiet", "--registry", reg.uri)
        one_line(rc, err, phrase)
        assert out == ""
    assert load_gaussian(reg, good.id, model=model.fingerprint).fingerprint == gauss.fingerprint
    assert reg.verify() == []


def test_gaussian_moments_streamed_equal_the_batch_fit():
    x = torch.randn(257, 2, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x = x * torch.arange(1, 7).reshape(2, 3)  # six different variances
    moments = Moments((2, 3))
    for part in x.split(50):
        moments.add(part)
    streamed, whole = Gaussian.from_moments(moments), Gaussian.fit(x)
    cov = torch.cov(x.reshape(len(x), -1).T)
    torch.testing.assert_close(streamed.mean, x.mean(0))
    torch.testing.assert_close(streamed.basis @ torch.diag(streamed.variances) @ streamed.basis.T, cov)
    torch.testing.assert_close(whole.variances, streamed.variances)


def test_dode_gaussian_bounds_n_before_sampling_and_prints_progress_lines(tmp_path, capsys):
    rc, out, err = run_cli(capsys, "gaussian", "--model", "mixture-smooth", "--n-samples", "1000000000",
                           "--registry", tmp_path / "registry")
    one_line(rc, err, "n_samples: Input should be less than or equal to 1000000")
    assert out == ""
    rc, _, err = run_cli(capsys, "gaussian", "--model", "mixture-smooth", "--n-samples", "200", "--batch-size", "10",
                           "--steps", "2", "--registry", tmp_path / "registry")
    lines = [line for line in err.splitlines() if line.startswith("gaussian of mixture-smooth:")]
    assert rc == 0 and len(lines) == 20 and lines[-1].endswith("200/200 sample (100%)"), err


# Registries that cannot hold what is published.
def test_a_registry_in_memory_is_refused_for_publishing(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DODE_REGISTRY", "memory://x")
    rc, out, err = run_cli(capsys, "sample", "--model", "gaussian", "--nfe", "2", "--sampling-n-samples", "2", "--quiet")
    one_line(rc, err, "lives in this process's memory and dies with it")
    assert out == ""


@pytest.mark.parametrize("inside", ["artifacts/{id}/files/reg", "artifacts/{id}/files", "nested/reg"])
def test_a_registry_inside_a_registry_is_refused(inside, gauss_registry, capsys):
    reg, _, good, _ = gauss_registry
    before = snapshot(Path(reg.uri))
    rc, _, err = run_cli(capsys, "sample", "--model", "gaussian", "--nfe", "2", "--sampling-n-samples", "2", "--quiet",
                         "--registry", Path(reg.uri) / inside.format(id=good.id))
    one_line(rc, err, f"is inside the registry {reg.uri}")
    assert snapshot(Path(reg.uri)) == before and reg.verify() == []


# --format diffusers: the output-folder rule of every format.
@pytest.fixture
def lambdas_registry(tmp_path):
    reg = Registry(tmp_path / "registry")  # lambdas of a DDPM-trained model: a schedule stock schedulers take
    config = (EMBEDDED_MODEL_DIR / "scheduler" / "scheduler_config.json").read_bytes()
    model = reg.publish("model", "m", {"scheduler/scheduler_config.json": config})
    lam = save_lambdas(reg, Lambdas([0.1, 0.2], "euler", [2.0, 1.0, 0.0]), "m/euler", parents=[model])
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "schedule.json").write_text("keep")
    return reg, lam, precious


def test_format_diffusers_never_writes_through_a_linked_out(lambdas_registry, tmp_path, capsys):
    reg, lam, precious = lambdas_registry
    before = snapshot(precious)
    (tmp_path / "out").symlink_to(precious)
    rc, _, err = run_cli(capsys, "artifacts", "get", lam.id, "--format", "diffusers", "--out", tmp_path / "out",
                         "--force", "--registry", reg.uri)
    one_line(rc, err, "is a symbolic link")
    assert snapshot(precious) == before


def test_format_diffusers_force_replaces_a_link_not_its_target(lambdas_registry, tmp_path, capsys):
    reg, lam, precious = lambdas_registry
    before = snapshot(precious)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "schedule.json").symlink_to(precious / "schedule.json")
    rc, _, err = run_cli(capsys, "artifacts", "get", lam.id, "--format", "diffusers", "--out", tmp_path / "out",
                         "--registry", reg.uri)
    one_line(rc, err, "exists with other content")
    rc, _, err = run_cli(capsys, "artifacts", "get", lam.id, "--format", "diffusers", "--out", tmp_path / "out",
                         "--force", "--registry", reg.uri)
    assert rc == 0 and snapshot(precious) == before
    written = tmp_path / "out" / "schedule.json"
    assert not written.is_symlink() and json.loads(written.read_text())["lambdas"] == [0.1, 0.2]


def test_format_diffusers_never_writes_inside_the_registry(lambdas_registry, capsys):
    reg, lam, _ = lambdas_registry
    before = snapshot(Path(reg.uri))
    rc, _, err = run_cli(capsys, "artifacts", "get", lam.id, "--format", "diffusers", "--out",
                         Path(reg.uri) / "artifacts" / lam.id / "files", "--registry", reg.uri)
    one_line(rc, err, "is inside the registry")
    assert snapshot(Path(reg.uri)) == before and reg.verify() == []


# Disk full: one line, the folder as it was.
@pytest.fixture(scope="module")
def samples_registry(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("full")
    code = "import sys; from dode.cli import main; sys.exit(main())"
    done = subprocess.run([sys.executable, "-c", code, "sample", "--model", "gaussian", "--nfe", "2",
                           "--sampling-n-samples", "30000", "--sampling-batch-size", "10000", "--quiet", "--registry", str(tmp / "registry")],
                          capture_output=True, text=True, check=True)
    return tmp / "registry", done.stdout.strip()


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("fmt, target", [
    ("files", "dode.store.reads.VerifiedReads.download"),
    ("png", "dode.store.export.write_png"),
    ("npz", "zipfile.ZipFile.write"),
    ("diffusers", "pathlib.Path.write_bytes"),
])
def test_disk_full_is_one_line_and_leaves_the_folder_as_it_was(fmt, target, samples_registry, lambdas_registry,
                                                               tmp_path, capsys, monkeypatch):
    """Disk full simulated: the writer of each format raises OSError(ENOSPC) (a real full tmpfs: next test)."""
    root, samples = samples_registry
    reg, lam, _ = lambdas_registry
    registry, id = (reg.uri, lam.id) if fmt == "diffusers" else (root, samples)
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("keep")
    before = snapshot(out)
    monkeypatch.setattr(target, enospc)
    rc, _, err = run_cli(capsys, "artifacts", "get", id, "--format", fmt, "--out", out, "--registry", registry)
    one_line(rc, err, f"no space left on the device of {out}")
    assert snapshot(out) == before


def unshare_works() -> bool:
    try:
        return subprocess.run(["unshare", "-Urm", "true"], capture_output=True, check=False, timeout=20).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@pytest.mark.skipif(not unshare_works(), reason="needs `unshare -Urm` to mount a small tmpfs")
@pytest.mark.parametrize("fmt", ["npz", "png", "files"])
def test_a_real_full_disk_is_one_line_no_sigbus(fmt, samples_registry, tmp_path):
    """A 1 MiB tmpfs (in a private mount namespace) and 1.9 MB of samples: the npz used to die of SIGBUS."""
    root, samples = samples_registry
    mount = tmp_path / "small"
    mount.mkdir()
    script = (f"mount -t tmpfs -o size=1m tmpfs {mount} && mkdir {mount}/out && echo keep > {mount}/out/old.txt && "
              f"{sys.executable} -c 'import sys; from dode.cli import main; sys.exit(main())' artifacts get {samples} "
              f"--format {fmt} --out {mount}/out --registry {root}; echo rc=$?; ls -A {mount}/out")
    done = subprocess.run(["unshare", "-Urm", "sh", "-c", script], capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.stdout.split() == ["rc=2", "old.txt"], done.stdout + done.stderr
    line = (f"dode artifacts: error: no space left on the device of {mount}/out; free some or choose another "
            f"folder (nothing was written into {mount}/out)")
    assert done.stderr.strip().splitlines() == [line]


def test_npz_is_written_through_a_file_and_reads_back(samples_registry, tmp_path, capsys):
    root, samples = samples_registry
    rc, _, err = run_cli(capsys, "artifacts", "get", samples, "--format", "npz", "--out", tmp_path, "--registry", root)
    assert rc == 0, err
    with np.load(tmp_path / "samples.npz") as z:
        assert z["images"].shape == (30000, 1, 8, 8) and z["images"].dtype == np.uint8
        assert (z["seeds"] == np.arange(30000)).all()


# --fit-options: bounded too.
def test_fit_options_nested_deep_are_one_argparse_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit:
        run_cli(capsys, "run", "distill", "--fit-options", '{"a": ' + "[" * 3000 + "]" * 3000 + "}",
                "--registry", tmp_path / "registry")
    err = capsys.readouterr().err
    assert exit.value.code == 2 and "nests deeper than 64 levels" in err and "Traceback" not in err
