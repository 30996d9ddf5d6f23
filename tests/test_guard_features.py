"""The guard's own digits features: shipped, offline, deterministic, reproducible from their seed, declared
by the digits model and used by the flows' distill step."""

import json

import pytest
import torch

from dode.common.images import to_model, to_uint8
from dode.metrics.digits import classifier_accuracy, digits_split, load_digits_images
from dode.metrics.guard_features import (
    GUARD_FEATURES,
    GUARD_FEATURES_DIR,
    GuardClassifier,
    guard_features,
    load_guard_classifier,
    load_guard_features,
    train_guard_features,
)
from dode.models import load_model
from dode.store.lambdas import load_lambdas
from dode.store.registry import Registry


@pytest.fixture(scope="module")
def config():
    return json.loads((GUARD_FEATURES_DIR / "config.json").read_text())


def test_the_feature_map_loads_offline_with_the_stated_shape_and_is_deterministic(config):
    feat = load_guard_features()
    x = torch.randn(20, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64).clamp(-1, 1)
    f = feat(x)
    assert feat.name == "digits-guard" and f.shape == (20, config["feature_dim"]) and f.dtype == torch.float64
    assert torch.equal(f, feat(x.clone()))
    torch.testing.assert_close(f[5:7], feat(x[5:7]), rtol=1e-5, atol=1e-5)  # each row depends on its own sample only (float32 sums)
    assert f.std(0).min() > 0  # every feature varies: the Frechet covariance is not singular


def test_the_map_sees_the_samples_as_the_pipeline_stores_them():
    feat = load_guard_features()
    x = 1.2 * torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert torch.equal(feat(x), feat(to_model(to_uint8(x))))
    with pytest.raises(ValueError, match=r"\(n, 1, 8, 8\)"):
        feat(torch.zeros(3, 64))


def test_the_classifier_is_not_the_evaluation_one_and_recognises_held_out_digits(config):
    model = load_guard_classifier()
    assert isinstance(model, GuardClassifier)
    images, labels = load_digits_images()
    _, test = digits_split(len(images), config["training"]["test_fraction"], config["training"]["split_seed"])
    accuracy = classifier_accuracy(model, images[test], labels[test])
    assert accuracy == pytest.approx(config["test_accuracy"], abs=1e-6) and accuracy > 0.95
    assert config["training"]["seed"] != 0 and config["training"]["split_seed"] != 0  # the evaluation one's


def test_a_retrain_from_the_seed_reproduces_the_committed_weights(config):
    trained, retrained_config = train_guard_features(**config["training"])
    committed = load_guard_classifier().state_dict()
    assert retrained_config["training"] == config["training"]
    for name, value in trained.state_dict().items():
        torch.testing.assert_close(value, committed[name], rtol=1e-3, atol=1e-4)


def test_models_declare_their_guard_features_by_registered_name():
    assert load_model("digits-ddpm").guard_features == "digits-guard"
    assert load_model("mixture-digits").guard_features is None and guard_features(None) is None
    assert guard_features("digits-guard") is load_guard_features()
    with pytest.raises(ValueError, match="choose one of .*digits-guard"):
        guard_features("inception")
    assert set(GUARD_FEATURES) == {"digits-guard"}


def test_the_flows_distill_step_guards_digits_in_the_declared_features(tmp_path):
    from dode.distillation.config import FitConfig
    from dode.distillation.teacher import TeacherConfig
    from dode.pipeline.steps import distill, register_model, teacher

    uri, grid = str(tmp_path / "reg"), {"family": "karras", "steps": 3}
    model_id = register_model(uri, "digits-ddpm")
    spec = TeacherConfig(factor=2, n_samples=16, batch_size=16)
    traj = teacher(uri, model_id, grid, spec)
    art_id = distill(uri, model_id, grid, "euler", spec, FitConfig(objective="final", options={"iterations": 2}),
                     trajectory_id=traj)
    reg = Registry(uri)
    lam = load_lambdas(reg, art_id)
    assert lam.guard["feature_map"] == "digits-guard" and lam.guard["criterion"] == "fd"
    assert reg.get(art_id).params["guard_features"] == "digits-guard"
