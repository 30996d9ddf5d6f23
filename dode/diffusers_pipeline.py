"""DODEPipeline: unconditional sampling for a UNet2DModel with any scheduler that scales its inputs.

``DDPMPipeline`` starts from unit noise and never calls ``scale_model_input``, which is right only for
VP schedulers; this loop honours ``init_noise_sigma`` and ``scale_model_input``, so sigma-space
schedulers (``DODEScheduler``, diffusers' Euler/Heun) sample correctly.
"""

from __future__ import annotations

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput, SchedulerMixin, UNet2DModel
from diffusers.utils.torch_utils import randn_tensor

from .diffusers_scheduler import DODEScheduler

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


class DODEPipeline(DiffusionPipeline):
    """``pipe(batch_size, generator=..., num_inference_steps=None)``: x_T = init_noise_sigma n, then per
    scheduler timestep: eps = unet(scale_model_input(x, t), t); x = step(eps, t, x)."""

    model_cpu_offload_seq = "unet"

    def __init__(self, unet: UNet2DModel, scheduler: SchedulerMixin) -> None:
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_inference_steps: int | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple:
        """Sample ``batch_size`` images; ``latents`` (unit noise) replaces the drawn noise; ``output_type``
        "latent" returns the final state unclipped (sigma-space x0), "pt"/"np"/"pil" images in [0, 1]."""
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"unknown output_type {output_type!r}; choose one of {list(OUTPUT_TYPES)}")
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
            out = self.unet(self.scheduler.scale_model_input(x, t), t).sample
            x = self.scheduler.step(out, t, x).prev_sample

        if output_type == "latent":
            images = x
        else:
            images = (x / 2 + 0.5).clamp(0, 1)
            if output_type != "pt":
                images = images.cpu().permute(0, 2, 3, 1).float().numpy()
                images = self.numpy_to_pil(images) if output_type == "pil" else images
        return ImagePipelineOutput(images=images) if return_dict else (images,)


__all__ = ["DODEPipeline", "DODEScheduler"]
