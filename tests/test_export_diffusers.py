"""`dode artifacts get ID --format diffusers`: a learned grid in the form stock diffusers schedulers take, run in
the stock scheduler, matches the dode sampler without lambda (tiny random UNet on a DDPM schedule)."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import DDPMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler
from test_diffusers_scheduler import tiny_unet2d

import dode
from dode.cli import main
from dode.integrations.diffusers.export import diffusers_schedule
from dode.models import VPDenoiser
from dode.store.lambdas import save_lambdas
from dode.store.registry import Registry

TRAINING = {"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02,
            "prediction_type": "epsilon"}
STOCK = {"EulerDiscreteScheduler": EulerDiscreteScheduler, "DPMSolverMultistepScheduler": DPMSolverMultistepScheduler}


@pytest.fixture(scope="module")
def den():
    unet = tiny_unet2d()
    return VPDenoiser(unet, DDPMScheduler(**TRAINING).alphas_cumprod)


def learned_grid(den, steps: int, on_integer_timesteps: bool) -> list[float]:
    """A grid no family makes (a perturbed Karras grid), or the sigmas of (non-uniform) integer timesteps."""
    if on_integer_timesteps:
        t = torch.tensor([990, 700, 420, 190, 45][:steps])
        return [*den.sigmas_train[t].tolist(), 0.0]
    base = dode.karras_sigmas(steps, den.sigma_min, den.sigma_max, 7.0)
    wobble = 1 + 0.15 * torch.sin(torch.arange(steps + 1, dtype=torch.float64))
    inner = (base[1:-1] * wobble[1:-1]).clamp(den.sigma_min, den.sigma_max)
    return [float(base[0]), *inner.tolist(), 0.0]


def run_stock(spec: dict, unet, noise: torch.Tensor) -> torch.Tensor:
    stock = spec["scheduler"]
    scheduler = STOCK[stock["class"]](**stock["config"])
    scheduler.set_timesteps(**stock["set_timesteps"])
    x = noise * scheduler.init_noise_sigma
    with torch.no_grad():
        for t in scheduler.timesteps:
            out = unet(scheduler.scale_model_input(x, t), t.expand(len(x))).sample
            x = scheduler.step(out, t, x).prev_sample
    return x.to(torch.float64)


@pytest.mark.parametrize(("solver", "on_integer_timesteps"), [("euler", False), ("dpmpp_2m", True)])
def test_the_exported_schedule_in_a_stock_scheduler_is_the_dode_sampler_without_lambda(den, solver,
                                                                                       on_integer_timesteps):
    sigmas = learned_grid(den, 5, on_integer_timesteps)
    lam = dode.Lambdas([0.3, -0.2, 0.1, 0.0, 0.2], solver, sigmas)  # not applied by stock schedulers
    spec = json.loads(json.dumps(diffusers_schedule(lam, TRAINING, "abc")))
    assert spec["scheduler"]["exact"] and spec["sigmas"] == sigmas and len(spec["timesteps"]) == 5
    noise = torch.randn(3, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    theirs = run_stock(spec, den.model, noise)
    grid = torch.tensor(sigmas, dtype=torch.float64)
    start = noise * (float(run_start(spec, sigmas)) / sigmas[0])  # their x_T in dode's unit noise
    with torch.no_grad():
        ours = dode.sample(den, start, grid, solver)
    assert (ours - theirs).abs().max() <= 1e-5 * ours.abs().max()


def run_start(spec: dict, sigmas: list[float]) -> float:
    """The stock scheduler's starting state scale in sigma space: sigma_0 for Euler, sqrt(sigma_0^2 + 1) for the
    VP-space DPM-Solver (unit noise in x_VP)."""
    return sigmas[0] if spec["scheduler"]["class"] == "EulerDiscreteScheduler" else (sigmas[0] ** 2 + 1) ** 0.5


def test_a_grid_between_training_timesteps_is_rounded_for_dpm_solver_and_says_so(den):
    lam = dode.Lambdas([0.0] * 5, "dpmpp_2m", learned_grid(den, 5, False))
    spec = diffusers_schedule(lam, TRAINING)
    assert not spec["scheduler"]["exact"]
    assert spec["scheduler"]["set_timesteps"]["timesteps"] == [round(t) for t in spec["timesteps"]]
    unipc = diffusers_schedule(dode.Lambdas([0.0] * 5, "unipc", lam.sigmas), TRAINING)
    assert unipc["scheduler"] is None and unipc["sigmas"] == list(lam.sigmas)


def test_cli_writes_schedule_and_snippet_for_a_registered_result(tmp_path, capsys):
    from dode.pipeline.steps import register_model

    model_id = register_model(str(tmp_path / "reg"), "digits-ddpm")
    reg = Registry(tmp_path / "reg")
    den = VPDenoiser(None, DDPMScheduler(**TRAINING).alphas_cumprod)
    lam = dode.Lambdas([0.0] * 4, "euler", learned_grid(den, 4, False))
    art = save_lambdas(reg, lam, "timesteps-only", parents=[model_id])
    assert main(["artifacts", "get", art.id[:8], "--format", "diffusers", "--out", str(tmp_path / "out"),
                 "--registry", str(tmp_path / "reg")]) == 0
    spec = json.loads((tmp_path / "out" / "schedule.json").read_text())
    assert spec["scheduler"]["set_timesteps"] == {"sigmas": list(lam.sigmas)} and spec["artifact"] == art.id
    assert spec["scheduler"]["config"]["beta_schedule"] == "linear"  # the digits model's own schedule
    snippet = (tmp_path / "out" / "use_schedule.py").read_text()
    compile(snippet, "use_schedule.py", "exec")
    assert "sigmas=" in snippet and "without them" in snippet
    assert main(["artifacts", "get", model_id[:8], "--format", "diffusers", "--out", str(tmp_path / "o2"),
                 "--registry", str(tmp_path / "reg")]) == 2
    assert "writes the schedule of a 'lambdas' artifact" in capsys.readouterr().err
