"""Saved folders load the diffusers way: DiffusionPipeline.from_pretrained(folder, trust_remote_code=True) in a
fresh process that never imported dode gives back the DODEScheduler (with its lambdas and grid) inside a stock
pipeline, and a DODEPipeline; without trust_remote_code diffusers' own error says to pass it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_diffusers_scheduler import tiny_sd_pipeline, tiny_unet2d

from dode.integrations.diffusers.loading import loader_source
from dode.integrations.diffusers.pipeline import DODEPipeline
from dode.integrations.diffusers.scheduler import DODEScheduler

ROOT = Path(__file__).resolve().parents[1]
LOAD = """
import json, sys
from diffusers import DiffusionPipeline
assert not any(m == "dode" or m.startswith("dode.") for m in sys.modules)
pipe = DiffusionPipeline.from_pretrained(sys.argv[1], trust_remote_code={trust})
s = pipe.scheduler
print(json.dumps({{"pipeline": type(pipe).__name__, "scheduler": type(s).__name__, "module": type(s).__module__,
                  "lambdas": list(s.config.lambdas), "sigmas": s.sigmas.tolist()}}))
"""


def load_in_a_fresh_process(folder: Path, tmp_path: Path, trust: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", LOAD.format(trust=trust), str(folder)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300, check=False)


def test_a_stock_pipeline_saved_with_a_dode_scheduler_loads_in_a_fresh_process(tmp_path):
    pipe = tiny_sd_pipeline()
    pipe.scheduler = DODEScheduler.from_scheduler(pipe.scheduler, solver="dpmpp_2m", nfe=3, lambdas=[0.0, 0.5, -0.2])
    pipe.save_pretrained(tmp_path / "sd")
    done = load_in_a_fresh_process(tmp_path / "sd", tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.splitlines()[-1])
    assert got == {"pipeline": "StableDiffusionPipeline", "scheduler": "DODEScheduler",
                   "module": "dode.integrations.diffusers.scheduler", "lambdas": [0.0, 0.5, -0.2],
                   "sigmas": pipe.scheduler.sigmas.tolist()}
    refused = load_in_a_fresh_process(tmp_path / "sd", tmp_path, trust=False)
    assert refused.returncode != 0 and "trust_remote_code=True" in refused.stderr


def test_a_saved_dode_pipeline_loads_in_a_fresh_process_and_in_this_one(tmp_path):
    sched = DODEScheduler.from_scheduler({"beta_schedule": "linear"}, solver="euler", nfe=3, lambdas=[0.0, 0.1, 0.2])
    pipe = DODEPipeline(unet=tiny_unet2d(), scheduler=sched)
    pipe.save_pretrained(tmp_path / "pipe")
    assert json.loads((tmp_path / "pipe" / "model_index.json").read_text())["_class_name"] == ["dode_pipeline",
                                                                                               "DODEPipeline"]
    done = load_in_a_fresh_process(tmp_path / "pipe", tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.splitlines()[-1])
    assert (got["pipeline"], got["scheduler"], got["lambdas"]) == ("DODEPipeline", "DODEScheduler", [0.0, 0.1, 0.2])

    back = DODEPipeline.from_pretrained(tmp_path / "pipe")  # its own class: no trust_remote_code needed
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    run = [p(batch_size=2, latents=x, output_type="latent").images for p in (pipe, back.to(torch.float64))]
    assert torch.equal(*run)


def test_a_changed_loader_is_not_trusted_on_the_callers_behalf(tmp_path):
    sched = DODEScheduler.from_scheduler({"beta_schedule": "linear"}, solver="euler", nfe=3)
    DODEPipeline(unet=tiny_unet2d(), scheduler=sched).save_pretrained(tmp_path / "pipe")
    loader = tmp_path / "pipe" / "dode_pipeline.py"
    assert loader.read_text() == loader_source("dode.integrations.diffusers.pipeline", "DODEPipeline")
    loader.write_text(loader.read_text() + "print('not only an import')\n")
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        DODEPipeline.from_pretrained(tmp_path / "pipe")
