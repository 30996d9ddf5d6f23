"""`dode artifacts get ID --format diffusers`: exact or refused. A learned grid in the form a stock diffusers scheduler
takes, run in that scheduler, is the dode sampler without lambda (tiny random UNet on a DDPM schedule or as a
flow-matching velocity model, float64, 1e-5); the written snippet runs on the embedded digits models' own pipelines;
what no stock scheduler reproduces (off-timestep DPM-Solver grids, other solvers, an analytic first step) is
refused with DODEScheduler named."""

from __future__ import annotations

import json

import diffusers
import numpy
import pytest
import torch
from diffusers import DDPMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler
from test_diffusers_scheduler import tiny_unet2d

import dode
from dode.cli import main
from dode.core.gaussian import FirstStep, Gaussian
from dode.core.grids import GridSpec
from dode.integrations.diffusers.export import diffusers_schedule, snippet
from dode.models import VPDenoiser
from dode.models.flow import FlowDenoiser, FlowSchedule, unet_call
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


@pytest.mark.parametrize(("solver", "on_integer_timesteps"), [("euler", False), ("dpmpp_2m", True),
                                                              ("dpmpp_3m", True)])
def test_the_exported_schedule_in_a_stock_scheduler_is_the_dode_sampler_without_lambda(den, solver,
                                                                                       on_integer_timesteps):
    sigmas = learned_grid(den, 5, on_integer_timesteps)
    lam = dode.Lambdas([0.3, -0.2, 0.1, 0.0, 0.2], solver, sigmas)  # not applied by stock schedulers
    spec = json.loads(json.dumps(diffusers_schedule(lam, TRAINING, "abc")))
    assert spec["sigmas"] == sigmas and len(spec["timesteps"]) == 5 and spec["nfe"] == 5
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


@pytest.mark.parametrize(("solver", "family"), [("euler", "flow"), ("euler", "karras"), ("unipc", "karras"),
                                               ("unipc_2", "karras")])
def test_the_exported_flow_grid_in_a_stock_scheduler_is_the_dode_sampler_and_is_not_shifted_twice(solver, family):
    """A flow-matching model (a UNet predicting velocity, SD3's shift 3): the stored grid is post-shift, so the
    stock scheduler takes t = sigma / (1 + sigma) with shift 1; with the model's own shift it would be shifted
    again (and sample elsewhere). UniPC takes flow grids from a finite sigma."""
    unet, schedule = tiny_unet2d(), FlowSchedule(shift=3.0)
    den = FlowDenoiser(unet_call(unet), schedule)
    grid = GridSpec("flow", 6).sigmas(den) if family == "flow" else dode.karras_sigmas(6, 0.01, 50.0)
    lam = dode.Lambdas([0.1] * 6, solver, grid.tolist())
    training = {**schedule.to_config(), "_class_name": "FlowMatchEulerDiscreteScheduler"}
    spec = json.loads(json.dumps(diffusers_schedule(lam, training, "abc")))
    noise = torch.randn(3, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = dode.sample(den, noise, grid, solver)
    start = noise * float(grid[0] / (1 + grid[0]))  # x_t at t_0 of dode's x_T = sigma_0 n
    theirs = run_flow_stock(spec["scheduler"], unet, start)
    assert (ours - theirs).abs().max() <= 1e-5 * ours.abs().max()
    if solver == "euler":
        twice = run_flow_stock({**spec["scheduler"], "config": schedule.to_config()}, unet, start)
        assert (ours - twice).abs().max() > 1e-3 * ours.abs().max()


def run_flow_stock(stock: dict, unet, x: torch.Tensor) -> torch.Tensor:
    scheduler = getattr(diffusers, stock["class"])(**stock["config"])
    scheduler.set_timesteps(**{key: numpy.asarray(value) for key, value in stock["set_timesteps"].items()})
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(unet(x, t).sample, t, x).prev_sample
    return x.to(torch.float64)


def test_unipc_from_t_one_is_refused():
    grid = GridSpec("flow", 6).sigmas(FlowDenoiser(None, FlowSchedule(shift=3.0)))
    training = {**FlowSchedule(shift=3.0).to_config(), "_class_name": "FlowMatchEulerDiscreteScheduler"}
    with pytest.raises(ValueError, match="moves to 0.999999.*DODEScheduler.from_artifact"):
        diffusers_schedule(dode.Lambdas([0.0] * 6, "unipc", grid.tolist()), training, "abc")


@pytest.mark.parametrize(("lam", "message"), [
    (dode.Lambdas([0.0] * 5, "dpmpp_2m", [14.0, 5.0, 2.0, 0.7, 0.1, 0.0]), "integer training timesteps only"),
    (dode.Lambdas([0.0] * 5, "unipc", [14.0, 5.0, 2.0, 0.7, 0.1, 0.0]), "custom grid for"),
    (dode.Lambdas([0.0] * 9, "heun", [14.0, 5.0, 2.0, 0.7, 0.1, 0.0]), "custom grid for"),
])
def test_what_no_stock_scheduler_reproduces_is_refused_with_dode_scheduler_named(lam, message):
    with pytest.raises(ValueError, match=f"{message}.*DODEScheduler.from_artifact"):
        diffusers_schedule(lam, TRAINING, "abc")


def test_an_analytic_first_step_is_refused():
    x = torch.randn(64, 1, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    first = FirstStep("analytic", Gaussian.fit(x, rank=4)).to_dict()
    lam = dode.Lambdas([0.0] * 4, "dpmpp_2m", [14.6, 5.0, 2.0, 0.7, 0.0], first_step=first)
    with pytest.raises(ValueError, match="analytic Gaussian step.*DODEScheduler.from_artifact"):
        diffusers_schedule(lam, TRAINING, "abc")


def test_cli_writes_schedule_and_a_snippet_that_runs_on_the_models_pipeline(tmp_path, capsys):
    """digits-ddpm is a DDPMPipeline (no prompt, no grid argument): the snippet is the denoising loop over its UNet,
    and run as written on the model's folder it gives dode.sample on the grid (float32, 1e-4)."""
    from dode.common.packaged import MODELS_DIR
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
    assert "DDPMPipeline takes no grid" in snippet and "pipe(" not in snippet
    run = snippet.replace("path/to/your/pipeline", str(MODELS_DIR / "digits-ddpm"))
    run = run.replace("Path(__file__).parent", f"Path({str(tmp_path / 'out')!r})")
    space: dict = {}
    exec(compile(run, "use_schedule.py", "exec"), space)  # noqa: S102  (the file this command wrote)
    scheduler, unet = space["scheduler"], space["unet"]
    noise = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))  # the snippet's draw
    start = noise.double() * (float(scheduler.init_noise_sigma) / lam.sigmas[0])
    with torch.no_grad():
        net = VPDenoiser(unet, DDPMScheduler(**TRAINING).alphas_cumprod)
        ours = dode.sample(net, start, torch.tensor(lam.sigmas).double(), "euler")
    assert (space["x"].double() - ours).abs().max() <= 1e-4 * ours.abs().max()
    assert main(["artifacts", "get", model_id[:8], "--format", "diffusers", "--out", str(tmp_path / "o2"),
                 "--registry", str(tmp_path / "reg")]) == 2
    assert "writes the schedule of a 'lambdas' artifact" in capsys.readouterr().err


def test_a_text_to_image_model_gets_the_grid_in_the_pipeline_call(den):
    lam = dode.Lambdas([0.0] * 5, "euler", learned_grid(den, 5, False))
    spec = diffusers_schedule(lam, TRAINING, "abc")
    text = snippet(spec, "StableDiffusionPipeline")
    assert 'pipe("a prompt", **grid)' in text and "sigmas=" in text and "unet(" not in text


def test_a_digits_flow_artifact_exports_for_flow_match_euler_and_its_snippet_samples_as_dode(tmp_path):
    """The issue's case: a flow-matching model's lambdas exported as a DDPM Euler schedule gave garbage (9e7 off);
    now FlowMatchEulerDiscreteScheduler with t = sigma / (1 + sigma), and the snippet's loop is dode.sample."""
    from dode.common.packaged import MODELS_DIR
    from dode.pipeline.steps import register_model

    model_id = register_model(str(tmp_path / "reg"), "digits-flow")
    reg = Registry(tmp_path / "reg")
    grid = GridSpec("flow", 4).sigmas(FlowDenoiser(None, FlowSchedule()))
    art = save_lambdas(reg, dode.Lambdas([0.2, -0.1, 0.1, 0.0], "euler", grid.tolist()), "final", parents=[model_id])
    assert main(["artifacts", "get", art.id[:8], "--format", "diffusers", "--out", str(tmp_path / "out"),
                 "--registry", str(tmp_path / "reg")]) == 0
    spec = json.loads((tmp_path / "out" / "schedule.json").read_text())
    assert spec["scheduler"]["class"] == "FlowMatchEulerDiscreteScheduler"
    run = (tmp_path / "out" / "use_schedule.py").read_text()
    run = run.replace("path/to/your/pipeline", str(MODELS_DIR / "digits-flow"))
    run = run.replace("Path(__file__).parent", f"Path({str(tmp_path / 'out')!r})")
    space: dict = {}
    exec(compile(run, "use_schedule.py", "exec"), space)  # noqa: S102  (the file this command wrote)
    noise = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))  # the snippet's draw
    with torch.no_grad():
        ours = dode.sample(FlowDenoiser(unet_call(space["unet"]), FlowSchedule()), noise.double(), grid, "euler")
    assert (space["x"].double() - ours).abs().max() <= 1e-4 * ours.abs().max()


def test_a_forged_pipeline_class_name_never_reaches_the_snippet(tmp_path):
    # The model's model_index.json is registry data: its class name is written into use_schedule.py only when it
    # is a Python identifier (a name with a newline could otherwise add code to the snippet the user runs).
    from dode.integrations.diffusers.export import model_files

    reg = Registry(tmp_path / "registry")
    forged = "DDPMPipeline\nimport os; os.system('touch pwned')\n#"
    files = {"scheduler/scheduler_config.json": json.dumps(TRAINING).encode(),
             "model_index.json": json.dumps({"_class_name": forged}).encode()}
    model = reg.publish("model", "forged", files)
    lam = save_lambdas(reg, dode.Lambdas([0.1, 0.2], "euler", [2.0, 1.0, 0.0]), "forged/euler", parents=[model])
    training, pipeline = model_files(reg, lam)
    assert training == TRAINING and pipeline is None
    spec = diffusers_schedule(dode.Lambdas([0.1, 0.2], "euler", [2.0, 1.0, 0.0]), training, lam.id)
    assert "os.system" not in snippet(spec, pipeline)
    honest = reg.publish("model", "honest", {**files, "model_index.json": b'{"_class_name": "DDPMPipeline"}'})
    lam2 = save_lambdas(reg, dode.Lambdas([0.1, 0.2], "euler", [2.0, 1.0, 0.0]), "honest/euler", parents=[honest])
    assert model_files(reg, lam2)[1] == "DDPMPipeline"
