"""FID exactly as pytorch-fid, FD on other features, streaming statistics, reference stats (issue 4).

Inception runs on random weights (pytorch-fid's own architecture, written to a temporary TORCH_HOME), mostly
at 64-d features (parity at all four of pytorch-fid's 64, 192, 768, 2048): values are meaningless as image
quality, but every code path is pytorch-fid's.
"""

import contextlib
import io
import subprocess
import sys
import time
from unittest import mock

import numpy as np
import pytest
import torch

from dode.cli import COMMANDS
from dode.cli import main as dode_main
from dode.common.images import iter_folder, write_png
from dode.metrics.features import FID_WEIGHTS_FILE, get_extractor, write_random_inception_weights
from dode.metrics.fid import (
    FeatureStats,
    StreamingMoments,
    UnreliableEstimateWarning,
    frechet_distance,
    load_stats,
    stats_from_images,
)

N_IMAGES = 10


@pytest.fixture(scope="session")
def torch_home(tmp_path_factory):
    """A TORCH_HOME whose hub cache holds random FID-Inception weights where pytorch-fid looks for them."""
    home = tmp_path_factory.mktemp("torch_home")
    write_random_inception_weights(home / "hub" / "checkpoints" / FID_WEIGHTS_FILE, seed=0)
    return home


@pytest.fixture
def inception_env(torch_home, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    return torch_home


@pytest.fixture(scope="session")
def folders(tmp_path_factory):
    """Two small PNG folders: RGB noise, and grayscale (mode L) stripes that pytorch-fid turns into RGB."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (N_IMAGES, 3, 16, 16), dtype=np.uint8)
    yy, xx = np.mgrid[0:16, 0:16]
    stripes = np.stack([((np.sin(xx / (1 + i) + yy / 3) + 1) * 127.5).astype(np.uint8)[None] for i in range(N_IMAGES)])
    names = [f"{i:03d}.png" for i in range(N_IMAGES)]
    write_png(noise, root / "a", names)
    write_png(stripes, root / "b", names)
    return root / "a", root / "b"


def dode_cli(*argv) -> tuple[int, str, str]:
    """``dode`` through its real entry point, with only this module's sub-commands registered."""
    out, err = io.StringIO(), io.StringIO()
    only_scoring = {name: mod for name, mod in COMMANDS.items() if mod == "dode.cli.scoring"}
    with mock.patch.dict(COMMANDS, only_scoring, clear=True), contextlib.redirect_stdout(out), \
            contextlib.redirect_stderr(err):
        rc = dode_main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


def printed_value(stdout: str, label: str) -> float:
    lines = [line for line in stdout.splitlines() if line.startswith(f"{label}: ")]
    assert len(lines) == 1, stdout
    return float(lines[0].split()[-1])


def run_pytorch_fid(torch_home, *invocations) -> list[str]:
    """Run ``python -m pytorch_fid`` argument lists (each naming its ``--dims``) in ONE subprocess (one interpreter
    start-up), same TORCH_HOME."""
    script = (
        "import sys\nfrom pytorch_fid import fid_score\n"
        f"for argv in {[list(map(str, i)) for i in invocations]!r}:\n"
        "    sys.argv = ['pytorch_fid', *argv, '--device', 'cpu', '--num-workers', '0']\n"
        "    fid_score.main()\n    print('END', flush=True)\n"
    )
    env = {"TORCH_HOME": str(torch_home), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split("END\n")[:-1]


def test_parity_with_pytorch_fid_on_folders_and_npz(inception_env, folders, tmp_path):
    a, b = folders
    theirs_npz = tmp_path / "theirs_a.npz"
    fid_ab, _ = run_pytorch_fid(inception_env, [a, b, "--dims", 64], ["--save-stats", a, theirs_npz, "--dims", 64])
    reference = printed_value(fid_ab, "FID")
    assert reference > 1.0  # random features still separate noise from stripes clearly

    with pytest.warns(UnreliableEstimateWarning, match="unreliable"):
        rc, out, _ = dode_cli("fid", a, b, "--dims", 64, "--device", "cpu")
    assert rc == 0 and printed_value(out, "FID") == pytest.approx(reference, rel=1e-6)

    # --save-stats writes what pytorch-fid writes, and pytorch-fid's .npz reads as one side.
    ours_npz = tmp_path / "ours_a.npz"
    assert dode_cli("fid", "--save-stats", a, ours_npz, "--dims", 64)[0] == 0
    ours, theirs = load_stats(ours_npz), load_stats(theirs_npz)
    assert ours.n == N_IMAGES and ours.features == "inception-64" and theirs.features == ""
    np.testing.assert_allclose(ours.mu, theirs.mu, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(ours.sigma, theirs.sigma, rtol=1e-5, atol=1e-9)
    with pytest.warns(UnreliableEstimateWarning):
        rc, out, _ = dode_cli("fid", theirs_npz, b, "--dims", 64)
    assert printed_value(out, "FID") == pytest.approx(reference, rel=1e-6)
    assert dode_cli("fid", "--save-stats", a, ours_npz, "--dims", 64)[0] == 2  # never overwrites


@pytest.mark.parametrize("dims", [192, 768, 2048])
def test_parity_with_pytorch_fid_at_its_other_feature_blocks(inception_env, folders, dims):
    a, b = folders
    (theirs,) = run_pytorch_fid(inception_env, [a, b, "--dims", dims])
    with pytest.warns(UnreliableEstimateWarning):
        rc, out, _ = dode_cli("fid", a, b, "--dims", dims, "--device", "cpu")
    assert rc == 0 and printed_value(out, "FID") == pytest.approx(printed_value(theirs, "FID"), rel=1e-6)


def test_fid_of_a_set_with_itself_is_zero(inception_env, folders):
    extractor = get_extractor("inception", dims=64, device="cpu")
    a, b = folders
    stats_a = stats_from_images(np.concatenate(list(iter_folder(a, 3))), extractor, batch_size=4)
    stats_a7 = stats_from_images(iter_folder(a, 7), extractor)  # other batches: same statistics
    stats_b = stats_from_images(iter_folder(b, 5), extractor)
    with pytest.warns(UnreliableEstimateWarning):
        between = frechet_distance(stats_a, stats_b)
    with pytest.warns(UnreliableEstimateWarning):
        same, rebatched = frechet_distance(stats_a, stats_a), frechet_distance(stats_a, stats_a7)
    assert abs(same) < 1e-8 * between and abs(rebatched) < 1e-5 * between


def test_streaming_moments_equal_numpy_cov():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(137, 12)) * rng.uniform(0.1, 3, 12) + 1e3  # large mean: the cancellation-prone case
    parts = np.split(x, [1, 5, 40, 41, 100])
    moments = StreamingMoments()
    for part in parts[:3]:
        moments.add(part)
    rest = StreamingMoments()
    for part in parts[3:]:
        rest.add(part)
    stats = moments.merge(rest).stats("pixels")
    assert stats.n == 137
    np.testing.assert_allclose(stats.mu, x.mean(0), rtol=1e-14)
    np.testing.assert_allclose(stats.sigma, np.cov(x, rowvar=False), rtol=1e-10, atol=1e-12)


def test_fd_pixels_and_fd_digits_are_labelled_fd(folders, tmp_path, monkeypatch):
    from pytorch_fid.fid_score import calculate_frechet_distance

    from dode.metrics import digits

    rng = np.random.default_rng(3)
    gray = rng.integers(0, 256, (N_IMAGES, 1, 8, 8), dtype=np.uint8)
    dark = (gray // 3).astype(np.uint8)
    write_png(gray, tmp_path / "gray", [f"{i}.png" for i in range(N_IMAGES)])
    write_png(dark, tmp_path / "dark", [f"{i}.png" for i in range(N_IMAGES)])
    feats = [x.reshape(N_IMAGES, -1).astype(np.float64) / 255 for x in (gray, dark)]
    expected = calculate_frechet_distance(feats[0].mean(0), np.cov(feats[0], rowvar=False),
                                          feats[1].mean(0), np.cov(feats[1], rowvar=False))
    with pytest.warns(UnreliableEstimateWarning):
        rc, out, _ = dode_cli("fid", "--features", "pixels", tmp_path / "gray", tmp_path / "dark")
    assert rc == 0 and "FID" not in out
    assert printed_value(out, "FD-pixels") == pytest.approx(expected, rel=1e-9)
    # pixels keep the stored channels: an RGB and a grayscale folder are one clear error
    rc, _, err = dode_cli("fid", "--features", "pixels", *folders)
    assert rc == 2 and "feature dims" in err

    # FD-digits on the digits classifier's features (a random classifier stands in for the trained one)
    monkeypatch.setattr(digits, "CLASSIFIER_DIR", digits.save_digits_classifier(digits.DigitsClassifier(), tmp_path / "clf"))
    extractor = get_extractor("digits")
    assert extractor.label == "FD-digits"
    direct = digits.digits_features(torch.from_numpy(gray).double() / 127.5 - 1, extractor.classifier).numpy()
    np.testing.assert_array_equal(extractor(gray), direct)
    with pytest.warns(UnreliableEstimateWarning):
        rc, out, _ = dode_cli("fid", "--features", "digits", tmp_path / "gray", tmp_path / "dark")
    assert rc == 0 and "FID" not in out and printed_value(out, "FD-digits") > 0
    rc, _, err = dode_cli("fid", "--features", "digits", "--dims", 64, tmp_path / "gray", tmp_path / "dark")
    assert rc == 2 and "--dims applies to Inception" in err


def test_frechet_distance_closed_form_and_bad_input():
    rng = np.random.default_rng(2)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    cov = np.diag(rng.uniform(0.5, 2, 5))
    # equal covariances: the trace term vanishes and FD = ||mu1 - mu2||^2
    value = frechet_distance(FeatureStats(mu1, cov, 100, "pixels"), FeatureStats(mu2, cov, 100, "pixels"))
    assert value == pytest.approx(float(((mu1 - mu2) ** 2).sum()), rel=1e-9)
    # diagonal covariances: Tr(S1 + S2 - 2 sqrt(S1 S2)) = sum (sqrt(s1) - sqrt(s2))^2
    cov2 = np.diag(rng.uniform(0.5, 2, 5))
    value = frechet_distance(FeatureStats(mu1, cov, 100), FeatureStats(mu1, cov2, 100))
    assert value == pytest.approx(float(((np.sqrt(np.diag(cov)) - np.sqrt(np.diag(cov2))) ** 2).sum()), rel=1e-9)
    with pytest.raises(ValueError, match="not comparable"):
        frechet_distance(FeatureStats(mu1, cov, 100, "pixels"), FeatureStats(mu2, cov, 100, "digits"))
    with pytest.raises(ValueError, match="feature dims"):
        frechet_distance(FeatureStats(mu1, cov), FeatureStats(mu2[:4], cov[:4, :4]))


def test_a_scipy_without_sqrtm_disp_is_one_error_saying_what_to_install(monkeypatch):
    # scipy 1.18 removed sqrtm's disp, which pytorch-fid 0.3 passes (seen on a CUDA machine's scipy).
    import scipy.linalg

    real = scipy.linalg.sqrtm
    monkeypatch.setattr(scipy.linalg, "sqrtm", lambda a: real(a))
    stats = FeatureStats(np.zeros(3), np.eye(3), 100)
    with pytest.raises(RuntimeError, match=r"pip install 'scipy>=1\.13,<1\.18'"):
        frechet_distance(stats, stats)


def test_missing_weights_is_one_error_saying_where(tmp_path, monkeypatch, folders):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    expected = tmp_path / "empty" / "hub" / "checkpoints" / FID_WEIGHTS_FILE
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError, match="put it at"):
        get_extractor("inception", dims=64)
    rc, out, err = dode_cli("fid", *folders, "--dims", 64)
    assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1 and str(expected) in err
    rc, _, err = dode_cli("fid", *folders, "--inception-weights", tmp_path / "nope.pth")
    assert rc == 2 and str(tmp_path / "nope.pth") in err
    assert time.perf_counter() - start < 10  # no download attempt, no hang


def test_samples_and_reference_stats_artifacts_are_sources(inception_env, folders, tmp_path):
    from dode.core.grids import GridSpec
    from dode.pipeline.generate import SamplingJob, export_png, run_sampling
    from dode.store.registry import Registry

    registry = Registry(tmp_path / "registry")
    samples = run_sampling(SamplingJob("mixture-smooth", "euler", GridSpec("karras", 5).to_dict(), n_samples=N_IMAGES,
                                       batch_size=4), registry)
    export_png(registry, samples, tmp_path / "png")
    b, reg = folders[1], ("--registry", registry.uri)
    with pytest.warns(UnreliableEstimateWarning):
        from_artifact = printed_value(dode_cli("fid", samples.id[:12], b, "--dims", 64, *reg)[1], "FID")
    with pytest.warns(UnreliableEstimateWarning):
        from_pngs = printed_value(dode_cli("fid", tmp_path / "png", b, "--dims", 64)[1], "FID")
    assert from_artifact == pytest.approx(from_pngs, rel=1e-6) and from_artifact > 0

    rc, out, _ = dode_cli("fid", "--register", "test/stripes", b, "--dims", 64, *reg)
    ref = registry.get(out.strip())
    assert rc == 0 and ref.kind == "reference-stats" and ref.params["features"] == "inception-64"
    assert ref.params["n"] == N_IMAGES and "pytorch-fid" in ref.params["implementation"]
    with pytest.warns(UnreliableEstimateWarning):
        against_ref = printed_value(dode_cli("fid", samples.id, ref.id, "--dims", 64, *reg)[1], "FID")
    assert against_ref == pytest.approx(from_artifact, rel=1e-9)
    rc, _, err = dode_cli("fid", samples.id, ref.id, "--dims", 192, *reg)
    assert rc == 2 and "'inception-64' features, not 'inception-192'" in err
    rc, _, err = dode_cli("fid", "no-such-thing", b, *reg)
    assert rc == 2 and "not an image folder, a .npz file or a registry artifact" in err
