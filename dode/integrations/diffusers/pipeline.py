"""DODEPipeline: sampling for a UNet2DModel (unconditional or class-conditional) with any scheduler that
scales its inputs.

``DDPMPipeline`` starts from unit noise and never calls ``scale_model_input``, which is right only for
VP schedulers; ``DDIMPipeline`` replaces any scheduler by a DDIMScheduler built from its config (the
lambdas are dropped; diffusers logs the ignored config keys). This loop honours ``init_noise_sigma``
and ``scale_model_input``, so sigma-space schedulers (``DODEScheduler``, diffusers' Euler/Heun) sample
correctly, and it recovers a DODEScheduler from such a rebuilt scheduler
(``DODEPipeline(unet=ddim_pipe.unet, scheduler=ddim_pipe.scheduler)``).

A saved folder is data: ``DODEPipeline.from_pretrained(folder)`` reads its model_index.json (bounded), accepts only
this class as the pipeline, and takes dode's components from the installed package, so no module in the folder
is imported. Folders saved by earlier dode versions shipped loader modules (``dode_pipeline.py``, a scheduler module)
named in model_index.json; they load the same way, their modules unread.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput, SchedulerMixin, UNet2DModel
from diffusers.utils.torch_utils import randn_tensor

from dode.integrations.diffusers.scheduler import DODEScheduler
from dode.models.vp import ClassConditionalUNet, is_class_conditional
from dode.store.manifest import load_json

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
DODE_CONFIG_KEYS = frozenset({"solver", "correction", "lambdas"})  # what marks a DODEScheduler's config
LEGACY_LOADER = ["dode_pipeline", "DODEPipeline"]  # _class_name in folders earlier dode versions saved
DODE_COMPONENTS = ("DODEScheduler", "DODEFlowScheduler")  # classes a component entry may take from ``dode``


def recovered_scheduler(scheduler: SchedulerMixin) -> SchedulerMixin:
    """The DODEScheduler a stock scheduler was rebuilt from (``DDIMScheduler.from_config(dode.distillation.config)``
    keeps the unknown keys, lambdas included, in its config); any other scheduler as given."""
    config = getattr(scheduler, "config", {})
    if isinstance(scheduler, DODEScheduler) or not DODE_CONFIG_KEYS <= set(config):
        return scheduler
    return DODEScheduler.from_config(config)


class DODEPipeline(DiffusionPipeline):
    """``pipe(batch_size, generator=..., num_inference_steps=None)``: x_T = init_noise_sigma n, then per
    scheduler timestep: eps = unet(scale_model_input(x, t), t); x = step(eps, t, x).

    Class-conditional UNets (``num_class_embeds``) take ``class_labels`` (one per sample, or cycled) and
    optional classifier-free guidance (``guidance_scale`` > 1 with the model's ``null_class``), as in
    ``dode.models.ClassConditionalUNet``. Learned-variance UNets (2C output channels) work as they are.
    """

    model_cpu_offload_seq = "unet"

    def __init__(self, unet: UNet2DModel, scheduler: SchedulerMixin) -> None:
        super().__init__()
        self.register_modules(unet=unet, scheduler=recovered_scheduler(scheduler))

    @classmethod
    def load_config(cls, pretrained_model_name_or_path: str | Path, *args: Any, **kwargs: Any) -> Any:
        """diffusers' reader of model_index.json (``from_pretrained`` calls it first), refusing any pipeline class
        but this one: a folder naming a module of its own (``["evil", "DODEPipeline"]``) gets one ValueError
        before anything is imported. dode components saved under an old module path (with a loader module
        beside them) are read as ``["dode", class]``, so diffusers takes them from the installed package."""
        loaded = super().load_config(pretrained_model_name_or_path, *args, **kwargs)
        config = loaded[0] if isinstance(loaded, tuple) else loaded
        if config.get("_class_name") not in (cls.__name__, LEGACY_LOADER):
            raise ValueError(
                f"{pretrained_model_name_or_path} is not a {cls.__name__} folder: its model_index.json names the "
                f"pipeline {config.get('_class_name')!r:.80}, not {cls.__name__!r}; a pipeline class that ships with "
                "a folder is code, so load it with DiffusionPipeline.from_pretrained(folder, trust_remote_code=True) "
                "if you trust its author"
            )
        config["_class_name"] = cls.__name__
        for name, entry in config.items():
            if (isinstance(entry, list) and len(entry) == 2 and str(entry[0]).startswith("dode.")
                    and entry[1] in DODE_COMPONENTS):
                config[name] = ["dode", entry[1]]
        return loaded

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs: Any) -> DODEPipeline:
        """diffusers' loader on a local folder or hub id; a local model_index.json is read bounded first."""
        index = Path(pretrained_model_name_or_path, "model_index.json")
        if index.is_file():
            load_json(index.read_bytes(), f"{index}")
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_inference_steps: int | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        class_labels: torch.Tensor | list[int] | None = None,
        guidance_scale: float = 1.0,
        null_class: int | None = None,
    ) -> ImagePipelineOutput | tuple:
        """Sample ``batch_size`` images; ``latents`` (unit noise) replaces the drawn noise; ``output_type``
        "latent" returns the final state unclipped (sigma-space x0), "pt"/"np"/"pil" images in [0, 1]."""
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"unknown output_type {output_type!r}; choose one of {list(OUTPUT_TYPES)}")
        model = self._model(class_labels, guidance_scale, null_class)
        size = self.unet.config.sample_size
        shape = (batch_size, self.unet.config.in_channels, *((size, size) if isinstance(size, int) else size))
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=self.device, dtype=self.unet.dtype)
        elif tuple(latents.shape) != shape:
            raise ValueError(
                f"latents must have shape {shape} (batch_size, channels, height, width), "
                f"got {tuple(latents.shape)}"
            )
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)

        # Integrate from sigma_max: the network sees scaled inputs, the scheduler keeps the sigma-space state.
        x = latents.to(device=self.device, dtype=self.unet.dtype) * self.scheduler.init_noise_sigma
        for t in self.progress_bar(self.scheduler.timesteps):
            out = model(self.scheduler.scale_model_input(x, t), t.expand(len(x)))
            x = self.scheduler.step(out, t, x).prev_sample

        if output_type == "latent":
            images = x
        else:
            images = (x / 2 + 0.5).clamp(0, 1)
            if output_type != "pt":
                images = images.cpu().permute(0, 2, 3, 1).float().numpy()
                images = self.numpy_to_pil(images) if output_type == "pil" else images
        return ImagePipelineOutput(images=images) if return_dict else (images,)

    def _model(self, class_labels, guidance_scale: float, null_class: int | None):
        """The network as out(x_vp, t): the UNet itself, or with its class labels (and guidance)."""
        if class_labels is None:
            if is_class_conditional(self.unet):
                raise ValueError(
                    "this UNet is class-conditional: pass class_labels (one per sample, or cycled)"
                )
            return lambda x_vp, t: self.unet(x_vp, t).sample
        labels = torch.as_tensor(class_labels, device=self.device)
        return ClassConditionalUNet(self.unet, labels, guidance_scale=guidance_scale, null_class=null_class)


__all__ = ["DODEPipeline", "DODEScheduler"]
