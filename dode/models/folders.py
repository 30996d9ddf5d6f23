"""A diffusers folder's settings checked before diffusers reads them: a model folder is data from anywhere.

Every config of the folder (``model_index.json``, each part's ``config.json``, the scheduler's
``scheduler_config.json``) is parsed bounded (``dode.common.bounded.load_json``: size, depth, finite numbers),
and what it asks the machine for is bounded before anything is built: the UNet's sample size by the memory one
sample's first feature map takes, the scheduler's timesteps by ``MAX_TRAIN_TIMESTEPS``. Wrong types and unknown
choices are one ValueError naming the file, the field and what to write instead.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dode.common.bounded import check_size, load_json, machine_bytes

UNET_INT_FIELDS = ("in_channels", "out_channels")  # positive integers
UNET_SIZE_FIELDS = ("sample_size", "layers_per_block", "block_out_channels")  # positive integers or lists of them
MAX_CHANNELS = 1 << 16  # channels of any layer of a real network are far fewer
MAX_TRAIN_TIMESTEPS = 1_000_000  # DDPM trains on 1,000; the table costs 8 bytes each, built at load
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "laplace", "sigmoid")  # diffusers' DDPM betas
CONFIGS = ("model_index.json", "unet/config.json", "transformer/config.json", "scheduler/scheduler_config.json")


def read_config(path: Path) -> dict[str, Any]:
    """A folder's JSON config, bounded; one ValueError unless it is a JSON object."""
    config = load_json(path)
    if not isinstance(config, dict):
        raise ValueError(f"{path} must hold a JSON object of settings, got {type(config).__name__}")
    return config


def check_model_folder(folder: Path) -> None:
    """Every config of a diffusers folder read bounded; the UNet's sizes and the scheduler's timesteps and betas
    checked (``check_unet``, ``check_scheduler_config``)."""
    for name in CONFIGS:
        path = folder / name
        if not path.is_file():
            continue
        config = read_config(path)
        if name == "unet/config.json":
            check_unet(config, path)
        elif name == "scheduler/scheduler_config.json":
            check_scheduler_config(config, str(path))


def check_unet_config(folder: Path) -> None:
    """One ValueError unless ``folder/unet/config.json`` is a JSON object whose sizes are positive integers
    within what this machine holds: checked before diffusers builds the network."""
    path = folder / "unet" / "config.json"
    if not path.is_file():
        raise ValueError(f"{folder} has no unet/config.json; pass a diffusers pipeline folder written by save_pretrained")
    check_unet(read_config(path), path)


def check_unet(config: Mapping[str, Any], path: Path) -> None:
    """The UNet settings' sizes: positive integers (lists of them where diffusers takes lists), channels at most
    ``MAX_CHANNELS``, and a sample size whose first feature map (float32) fits a quarter of this machine."""
    def positive(v: object) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v > 0

    for key in (k for k in (*UNET_INT_FIELDS, *UNET_SIZE_FIELDS) if k in config):
        value, listed = config[key], key in UNET_SIZE_FIELDS
        values = value if listed and isinstance(value, list) and value else [value]
        if not all(positive(v) for v in values):
            kind = "a positive integer or a list of them" if listed else "a positive integer"
            raise ValueError(f"{path}: {key!r} must be {kind}, got {value!r:.80}")
        if key != "sample_size":
            for v in values:
                check_size(f"{path}: {key!r}", v, MAX_CHANNELS, "dode's bound, far above any network's")
    if "sample_size" in config:
        size = config["sample_size"]
        pixels = math.prod(size) if isinstance(size, list) else size * size
        width = max(config.get("block_out_channels") or [1]) + config.get("in_channels", 1)
        bound = machine_bytes() // 4 // (4 * width)
        if pixels > bound:
            raise ValueError(f"{path}: 'sample_size' {size!r} asks for {pixels:,} pixels per sample; this machine "
                             f"holds at most {bound:,} ({width} float32 feature maps in a quarter of its memory)")


def check_scheduler_config(config: Mapping[str, Any], what: str) -> None:
    """A scheduler config's training schedule: ``num_train_timesteps`` in 1..MAX_TRAIN_TIMESTEPS, a known
    ``beta_schedule``, betas that are numbers in [0, 1]."""
    if "num_train_timesteps" in config:
        check_size(f"{what}: 'num_train_timesteps'", config["num_train_timesteps"], MAX_TRAIN_TIMESTEPS,
                   "dode's bound, far above any trained model's")
    schedule = config.get("beta_schedule", "linear")
    if schedule not in BETA_SCHEDULES:
        raise ValueError(f"{what}: unknown beta_schedule {schedule!r:.40}; choose one of {list(BETA_SCHEDULES)}")
    betas = [config.get(k) for k in ("beta_start", "beta_end") if config.get(k) is not None]
    trained = config.get("trained_betas")
    if trained is not None and not isinstance(trained, list):
        raise ValueError(f"{what}: 'trained_betas' must be a list of numbers or null")
    if trained:
        check_size(f"{what}: len(trained_betas)", len(trained), MAX_TRAIN_TIMESTEPS,
                   "dode's bound, far above any trained model's")
        betas += trained
    if not all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b <= 1 for b in betas):
        raise ValueError(f"{what}: beta_start, beta_end and trained_betas must be numbers in [0, 1]")
