"""Bad input, table-driven (issue 14, points 5 and 6): `dode fid`, `dode sample`, `dode train-model` and the
library under them. Each CLI case: one clear message (a key phrase), exit code 2, no traceback, nothing on
stdout, the registry's files unchanged and still verifying; the .npz cases that declare huge arrays also
allocate nothing large. Each library case: one ValueError with the key phrase.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import re
import traceback
import tracemalloc
import zipfile
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch

from dode import cli
from dode.common.images import iter_folder, write_png
from dode.core.correction import Lambdas
from dode.core.grids import GridSpec
from dode.core.schedules import karras_sigmas, refine, vp_sigmas
from dode.metrics.digits import digits_features, load_digits_classifier
from dode.metrics.fid import FeatureStats, StreamingMoments, stats_from_images, stats_to_bytes
from dode.models import check_unet_config, load_model
from dode.pipeline.generate import SamplingJob, run_sampling
from dode.store.lambdas import LAMBDAS_FILE, lambdas_to_dict
from dode.store.registry import Registry
from dode.training.digits import sample_digits, train_digits_classifier, train_digits_model

BIG = (20000,)  # a 20000 x 20000 float64 covariance: 3.2 GB if it were allocated
HUGE = ("big.npz", "bigsigma.npz")  # the files that declare it
MAX_PEAK = 64 << 20  # what refusing them may allocate, in bytes


def npz(path: Path, real: dict[str, np.ndarray], declared: dict[str, tuple[int, ...]] | None = None) -> Path:
    """A .npz of ``real`` arrays plus members whose .npy headers declare ``declared`` shapes over 1 kB of data."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, array in real.items():
            with zf.open(f"{name}.npy", "w") as fh:
                np.lib.format.write_array(fh, np.asarray(array), allow_pickle=False)
        for name, shape in (declared or {}).items():
            with zf.open(f"{name}.npy", "w") as fh:
                np.lib.format.write_array_header_1_0(fh, {"descr": "<f8", "fortran_order": False, "shape": shape})
                fh.write(bytes(1024))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Bad (and a few good) inputs: fake images, broken statistics, a broken UNet config, a fake weights file."""
    d = tmp_path_factory.mktemp("bad")
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (4, 1, 8, 8), dtype=np.uint8)
    write_png(gray, d / "good", [f"{i}.png" for i in range(4)])
    write_png(gray[:1], d / "one", ["0.png"])
    write_png(rng.integers(0, 256, (4, 3, 8, 8), dtype=np.uint8), d / "rgb", [f"{i}.png" for i in range(4)])
    (d / "empty").mkdir()
    (d / "notimg").mkdir()
    for name in ("fake.png", "notimg/a.png", "notimg/b.png", "fake.pth", "afile"):
        (d / name).write_text("not what its name says")
    (d / "notzip.npz").write_text("hello")
    npz(d / "ok3.npz", {"mu": np.zeros(3), "sigma": np.eye(3)})
    npz(d / "nan3.npz", {"mu": np.array([math.nan, 0, 0]), "sigma": np.eye(3)})
    npz(d / "inf3.npz", {"mu": np.zeros(3), "sigma": np.diag([math.inf, 1.0, 1.0])})
    npz(d / "mismatch.npz", {"mu": np.zeros(3), "sigma": np.eye(4)})
    npz(d / "nomu.npz", {})
    npz(d / "strings.npz", {"mu": np.array(["a", "b"]), "sigma": np.array([["a", "b"], ["c", "d"]])})
    npz(d / "bigsigma.npz", {"mu": np.zeros(3)}, {"sigma": BIG * 2})
    npz(d / "big.npz", {}, {"mu": BIG, "sigma": BIG * 2})
    (d / "digits.npz").write_bytes(stats_to_bytes(FeatureStats(np.zeros(3), np.eye(3), 10, "digits")))
    unet = d / "badunet" / "unet"
    unet.mkdir(parents=True)
    (d / "badunet" / "model_index.json").write_text(json.dumps({"_class_name": "DDPMPipeline"}))
    (unet / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel", "in_channels": "one"}))
    return d


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> tuple[Registry, str]:
    """A registry holding a small samples job and a lambdas artifact whose file holds NaN (its id returned)."""
    reg = Registry(tmp_path_factory.mktemp("reg") / "registry")
    run_sampling(SamplingJob("mixture-smooth", "euler", GridSpec("karras", 5).to_dict(), n_samples=4, batch_size=2), reg)
    sigmas = GridSpec("karras", 5).sigmas(load_model("mixture-smooth").denoiser)
    doc = {**lambdas_to_dict(Lambdas((0.0, 0.1, 0.2, 0.1, 0.0), "euler", tuple(sigmas.tolist()))),
           "values": [0.0, math.nan, 0.2, 0.1, 0.0]}
    art = reg.publish("lambdas", "tampered/nan", {LAMBDAS_FILE: json.dumps(doc).encode()},
                      params={"solver": "euler", "nfe": 5})
    return reg, art.id


def snapshot(reg: Registry) -> dict[str, str]:
    """sha256 of every file in the registry, by relative path (the staging area's transient files aside)."""
    root = Path(reg.uri)
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and "staging" not in p.relative_to(root).parts}


def dode(*argv: str) -> tuple[int | str, str, str, int]:
    """``dode`` in-process with this module's commands only: (exit code, stdout, stderr, peak bytes allocated).
    An exception escaping ``main`` is returned as its traceback on stderr (and an exit code of "exception")."""
    out, err = io.StringIO(), io.StringIO()
    commands = {"sample": "dode.cli.scoring", "fid": "dode.cli.scoring", "train-model": "dode.cli.train"}
    tracemalloc.start()
    try:
        with mock.patch.dict(cli.COMMANDS, commands, clear=True), \
                mock.patch.object(cli, "plugin_commands", dict, create=True), \
                contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = cli.main(list(argv))
    except SystemExit as exit_:  # argparse
        rc = exit_.code
    except BaseException:  # noqa: BLE001 - reported, then asserted absent
        rc, err = "exception", io.StringIO(traceback.format_exc())
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return rc, out.getvalue(), err.getvalue(), peak


SAMPLE = ("sample", "--model", "mixture-smooth", "--nfe", "5", "--sampling-n-samples", "4", "--device", "cpu")
FID_CASES = [  # argv ({d}: the data folder), key phrase of the one error
    (("{d}/fake.png", "{d}/ok3.npz"), "is a file, not an image folder or a .npz"),
    (("{d}/notimg", "{d}/good", "--features", "pixels"), "is not a readable image"),
    (("{d}/empty", "{d}/good", "--features", "pixels"), "holds no images"),
    (("{d}/one", "{d}/good", "--features", "pixels"), "a covariance needs at least 2 samples"),
    (("{d}/rgb", "{d}/good", "--features", "pixels"), "feature dims"),
    (("{d}/mismatch.npz", "{d}/ok3.npz"), "statistics need (D,) and (D, D)"),
    (("{d}/nomu.npz", "{d}/ok3.npz"), "has no 'mu' and 'sigma' arrays"),
    (("{d}/nan3.npz", "{d}/ok3.npz", "--features", "pixels"), "NaN or infinite"),
    (("{d}/ok3.npz", "{d}/inf3.npz", "--features", "pixels"), "NaN or infinite"),
    (("{d}/notzip.npz", "{d}/ok3.npz"), "is not a readable .npz file"),
    (("{d}/strings.npz", "{d}/ok3.npz", "--features", "pixels"), "must be real numbers"),
    (("{d}/bigsigma.npz", "{d}/ok3.npz", "--features", "pixels"), "statistics need (D,) and (D, D)"),
    (("{d}/big.npz", "{d}/ok3.npz", "--features", "pixels"), "at most 16384 dims"),
    (("{d}/ok3.npz", "{d}/ok3.npz"), "holds 3-d statistics, not the 2048 dims"),
    (("{d}/digits.npz", "{d}/ok3.npz", "--features", "pixels"), "'digits' features, not 'pixels'"),
    (("{d}/ok3.npz", "{d}/ok3.npz", "--batch-size", "0"), "--batch-size must be >= 1"),
    (("{d}/good", "{d}/good", "--batch-size", "-5", "--features", "pixels"), "--batch-size must be >= 1"),
    (("{d}/ok3.npz", "{d}/ok3.npz", "--batch-size", "many"), "invalid int value"),
    (("{d}/ok3.npz",), "expected PATH1 PATH2, got 1 path(s)"),
    (("{d}/ok3.npz", "{d}/ok3.npz", "{d}/ok3.npz"), "expected PATH1 PATH2, got 3 path(s)"),
    (("{d}/good", "{d}/good", "--features", "pixels", "--dims", "64"), "--dims applies to Inception"),
    (("{d}/good", "{d}/good", "--dims", "100"), "invalid choice"),
    (("{d}/good", "{d}/good", "--features", "clip"), "invalid choice"),
    (("{d}/ok3.npz", "{d}/ok3.npz", "--device", "gpu"), "unknown device 'gpu'"),
    (("--save-stats", "{d}/good", "{d}/ok3.npz", "--features", "pixels"), "already exists"),
    (("--save-stats", "{d}/good", "{d}/out.txt", "--features", "pixels"), "end in .npz"),
    (("--save-stats", "{d}/good", "{d}/nowhere/out.npz", "--features", "pixels"), "no folder"),
    (("{d}/good", "{d}/good", "--dims", "64", "--inception-weights", "{d}/fake.pth"),
     "does not hold the FID Inception weights"),
    (("{d}/good", "{d}/good", "--dims", "64", "--inception-weights", "{d}/none.pth"), "FID Inception weights not found"),
    (("deadbeef", "{d}/ok3.npz"), "not an image folder, a .npz file or a registry artifact"),
    (("--register", "k", "{d}/good", "--features", "pixels", "--registry", "{d}/afile"), "registry"),
]
SAMPLE_CASES = [
    (("--sampling-batch-size", "0"), "sampling.batch_size: Input should be greater than or equal to 1"),
    (("--sampling-batch-size", "-3"), "sampling.batch_size: Input should be greater than or equal to 1"),
    (("--sampling-n-samples", "0"), "sampling.n_samples: Input should be greater than or equal to 1"),
    (("--sampling-n-samples", "-1"), "sampling.n_samples: Input should be greater than or equal to 1"),
    (("--sampling-n-samples", str(10**12)), "sampling.n_samples: Input should be less than or equal to 10000000"),
    (("--sampling-n-samples", "10000000", "--sampling-batch-size", "1"), "a job has at most 100000"),
    (("--sampling-first-seed", "-1"), "sampling.first_seed: Input should be greater than or equal to 0"),
    (("--sampling-first-seed", str(2**63)), "sampling.first_seed: Input should be less than or equal to"),
    (("--sampling-first-seed", str(2**63 - 2)), "first_seed must be in [0, 2**63 - 1 - n_samples]"),
    (("--model", "nope"), "unknown model 'nope'; choose one of"),
    (("--model", "{d}/nowhere"), "no diffusers pipeline folder at"),
    (("--model", "{d}/badunet"), "'in_channels' must be a positive integer, got 'one'"),
    (("--solver", "rk45"), "invalid choice: 'rk45'"),
    (("--nfe", "1000000000"), "nfe: Input should be less than or equal to 100000"),
    (("--solver", "heun", "--nfe", "1000000"), "nfe: Input should be less than or equal to 100000"),
    (("--nfe", "0"), "nfe: Input should be greater than or equal to 1"),
    (("--nfe", "five"), "invalid int value"),
    (("--family", "linear"), "invalid choice"),
    (("--shard", "3"), "shard must be in"),
    (("--sampling-num-shards", "0"), "sampling.num_shards: Input should be greater than or equal to 1"),
    (("--device", "gpu"), "unknown device 'gpu'"),
    (("--lambdas", "deadbeef"), "no artifact 'deadbeef'"),
    (("--lambdas", "{lam}"), "lambdas"),
    (("--png-dir", "{d}/afile"), "is a file, not a folder"),
    (("--png-dir", "{d}/afile/sub"), "cannot write to"),
]
TRAIN_CASES = [
    (("--steps", "0"), "--steps must be >= 1"),
    (("--classifier-steps", "-1"), "--classifier-steps must be >= 1"),
    (("--sample-steps", "0"), "--sample-steps must be >= 1"),
    (("--threads", "0"), "--threads must be >= 1"),
    (("--samples", "-1"), "--samples must be >= 0"),
    (("--samples", "10", "--grid-dir", "{d}/grids"), ">= 64 with --grid-dir"),
    (("--seed", "-1"), "--seed must be in [0, 2**63 - 1]"),
    (("--seed", str(2**63)), "--seed must be in [0, 2**63 - 1]"),
    (("--out", "{d}/afile"), "--out"),
    (("--grid-dir", "{d}/afile"), "--grid-dir"),
    (("--only", "both"), "invalid choice"),
]
CLI_CASES = ([("fid", *argv, phrase) for argv, phrase in FID_CASES]
             + [(*SAMPLE, *argv, phrase) for argv, phrase in SAMPLE_CASES]
             + [("train-model", *argv, phrase) for argv, phrase in TRAIN_CASES])


@pytest.mark.parametrize("case", CLI_CASES, ids=lambda c: " ".join(c[:-1]).replace("{d}/", ""))
def test_cli_bad_input_is_one_clear_error(case, data, registry):
    reg, lam = registry
    *argv, phrase = case
    argv = [a.format(d=data, lam=lam) for a in argv]
    if argv[0] != "train-model" and "--registry" not in argv:
        argv += ["--registry", reg.uri]
    before = snapshot(reg)
    rc, out, err, peak = dode(*argv)
    assert "Traceback" not in err, err
    assert rc == 2 and out == "", (rc, out, err)
    assert phrase in err and len(err) < 1000, err
    if any(a.endswith(HUGE) for a in argv):
        assert peak < MAX_PEAK, f"allocated {peak / 2**20:.0f} MiB before refusing"
    assert snapshot(reg) == before and reg.verify() == []


def test_a_valid_call_passes_the_same_checks(data, registry):
    # The harness can fail: a valid call prints the distance, exits 0 and leaves the registry as it was.
    reg, _ = registry
    before = snapshot(reg)
    with pytest.warns(UserWarning, match="unreliable"):
        rc, out, _, _ = dode("fid", str(data / "good"), str(data / "good"), "--features", "pixels")
    assert rc == 0 and out.startswith("FD-pixels: ") and abs(float(out.split()[-1])) < 1e-3
    assert snapshot(reg) == before and len(before) > 3


def digits_images(n: int = 4) -> torch.Tensor:
    return torch.zeros(n, 1, 8, 8)


def write_classifier(folder: Path, config: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").write_bytes(b"not safetensors")
    return folder


def unet_folder(folder: Path, config: object, raw: str | None = None) -> Path:
    (folder / "unet").mkdir(parents=True, exist_ok=True)
    (folder / "unet" / "config.json").write_text(raw if raw is not None else json.dumps(config))
    return folder


LIBRARY_CASES = [  # (name, call(tmp_path), key phrase of the ValueError)
    ("karras rho=0", lambda t: karras_sigmas(5, rho=0), "rho must be > 0"),
    ("karras rho<0", lambda t: karras_sigmas(5, rho=-7), "rho must be > 0"),
    ("karras sigma_max=inf", lambda t: karras_sigmas(5, sigma_max=math.inf), "need finite numbers"),
    ("karras sigma_max=nan", lambda t: karras_sigmas(5, sigma_max=math.nan), "need finite numbers"),
    ("karras rho=nan", lambda t: karras_sigmas(5, rho=math.nan), "need finite numbers"),
    ("karras sigma_max<0", lambda t: karras_sigmas(5, sigma_max=-1.0), "0 < sigma_min < sigma_max"),
    ("karras min>=max", lambda t: karras_sigmas(5, 80.0, 80.0), "0 < sigma_min < sigma_max"),
    ("karras min=0", lambda t: karras_sigmas(5, 0.0), "0 < sigma_min < sigma_max"),
    ("karras steps=0", lambda t: karras_sigmas(0), "integer number of steps"),
    ("karras steps=2.5", lambda t: karras_sigmas(2.5), "integer number of steps"),
    ("karras steps=1e12", lambda t: karras_sigmas(10**12), "integer number of steps in [1, 10000000]"),
    ("karras sigma_max='80'", lambda t: karras_sigmas(5, sigma_max="eighty"), "need finite numbers"),
    ("vp abar with 0", lambda t: vp_sigmas(torch.linspace(1, 0, 10), 5), "alphas_cumprod must be"),
    ("vp abar increasing", lambda t: vp_sigmas(torch.linspace(0.1, 0.9, 10), 5), "non-increasing"),
    ("vp abar 2-D", lambda t: vp_sigmas(torch.full((2, 5), 0.5), 5), "1-D"),
    ("vp steps=0", lambda t: vp_sigmas(torch.linspace(0.99, 0.01, 10), 0), "integer number of steps"),
    ("refine factor=0", lambda t: refine(karras_sigmas(3), 0), "integer number of steps"),
    ("refine factor=1.5", lambda t: refine(karras_sigmas(3), 1.5), "integer number of steps"),
    ("refine rho=0", lambda t: refine(karras_sigmas(3), 2, rho=0), "rho must be > 0"),
    ("mixture noise (B,3,8,8)", lambda t: load_model("mixture-smooth").denoiser(torch.zeros(2, 3, 8, 8),
                                                                              torch.ones(2)), "samples have shape (1, 8, 8)"),
    ("mixture noise (B,64)", lambda t: load_model("mixture-digits").denoiser(torch.zeros(2, 64), torch.ones(2)),
     "samples have shape (1, 8, 8)"),
    ("gaussian noise (B,3,8,8)", lambda t: load_model("gaussian").denoiser(torch.zeros(2, 3, 8, 8), torch.ones(2)),
     "samples have shape (1, 8, 8)"),
    ("mixture sigma length", lambda t: load_model("mixture-smooth").denoiser(torch.zeros(2, 1, 8, 8), torch.ones(3)),
     "one noise level or one per sample"),
    ("unet in_channels 'one'", lambda t: check_unet_config(unet_folder(t, {"in_channels": "one"})),
     "'in_channels' must be a positive integer"),
    ("unet sample_size [8, 'x']", lambda t: check_unet_config(unet_folder(t, {"sample_size": [8, "x"]})),
     "'sample_size' must be a positive integer or a list of them"),
    ("unet block_out_channels []", lambda t: check_unet_config(unet_folder(t, {"block_out_channels": []})),
     "'block_out_channels' must be"),
    ("unet out_channels true", lambda t: check_unet_config(unet_folder(t, {"out_channels": True})),
     "'out_channels' must be a positive integer"),
    ("unet config a list", lambda t: check_unet_config(unet_folder(t, [1, 2])), "must hold a JSON object"),
    ("unet config not JSON", lambda t: check_unet_config(unet_folder(t, None, "{in_channels: 1")), "not valid JSON"),
    ("unet config missing", lambda t: check_unet_config(t), "has no unet/config.json"),
    ("model ./nowhere", lambda t: load_model("./nowhere"), "no diffusers pipeline folder"),
    ("job with unknown model", lambda t: SamplingJob("nope", "euler", {"family": "karras", "steps": 5}),
     "unknown model 'nope'"),
    ("stats NaN mu", lambda t: FeatureStats(np.array([math.nan]), np.eye(1)), "NaN or infinite"),
    ("stats shapes", lambda t: FeatureStats(np.zeros(3), np.eye(2)), "statistics need mu of shape (D,)"),
    ("stats n<0", lambda t: FeatureStats(np.zeros(1), np.eye(1), -1), "n >= 0"),
    ("moments 20000-d", lambda t: StreamingMoments().add(np.zeros((1, 20000))), "at most 16384 dims"),
    ("stats batch 0", lambda t: stats_from_images(np.zeros((2, 1, 8, 8), np.uint8), None, batch_size=0),
     "batch_size must be >= 1"),
    ("folder batch 0", lambda t: next(iter_folder(t, 0)), "batch size must be >= 1"),
    ("digits features batch 0", lambda t: digits_features(digits_images(), batch=0), "batch >= 1"),
    ("classifier width 'one'", lambda t: load_digits_classifier(write_classifier(t, {
        "schema_version": 1, "width": "one", "feature_dim": 64, "classes": 10})), "integers in [1, 4096]"),
    ("classifier config a list", lambda t: load_digits_classifier(write_classifier(t, [1])), "schema_version"),
    ("classifier weights broken", lambda t: load_digits_classifier(write_classifier(t, {
        "schema_version": 1, "width": 8, "feature_dim": 8, "classes": 10})), "does not fit its config.json"),
    ("train model steps 0", lambda t: train_digits_model(t, steps=0), "steps must be an integer >= 1"),
    ("train model ema 1", lambda t: train_digits_model(t, ema_decay=1.0), "0 <= ema_decay < 1"),
    ("train classifier batch 0", lambda t: train_digits_classifier(t, batch=0), "batch must be an integer >= 1"),
    ("sample digits n 0", lambda t: sample_digits(None, 0), "n must be an integer >= 1"),
]


@pytest.mark.parametrize("case", LIBRARY_CASES, ids=lambda c: c[0])
def test_library_bad_input_is_one_value_error(case, tmp_path):
    _, call, phrase = case
    with pytest.raises(ValueError, match=re.escape(phrase)):
        call(tmp_path)

