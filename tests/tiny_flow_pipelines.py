"""Tiny random-weight Stable Diffusion 3 and FLUX pipelines with their whole text stacks, built offline.

SD3: two CLIP encoders with projection (hidden 32 each, pooled 32 + 32 = 64) and a T5 encoder (d_model 32; joint
attention 32 after padding the CLIP states to T5's width); FLUX: a CLIP encoder (pooled 32) and a
T5 encoder (32). The tokenizers are character-level (CLIP: ``tiny_tokenizer``; T5: a word-level ``tokenizers``
model over the same characters), so no vocabulary is downloaded. The VAEs are tiny AutoencoderKLs.
"""

from __future__ import annotations

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from test_diffusers_scheduler import tiny_clip_config, tiny_tokenizer
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    CLIPTextModel,
    CLIPTextModelWithProjection,
    PreTrainedTokenizerFast,
    T5Config,
    T5EncoderModel,
)

FLUX_CONFIG = {"shift": 3.0, "use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15,
               "base_image_seq_len": 256, "max_image_seq_len": 4096}  # FLUX.1-dev's scheduler config
SD3_CONFIG = {"shift": 3.0}  # SD3-medium's


def tiny_t5_tokenizer(max_length: int = 16) -> PreTrainedTokenizerFast:
    """A character-level T5-style tokenizer (pad 0, eos 1, unk 2) from a ``tokenizers`` WordLevel model."""
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{c: 3 + i for i, c in enumerate("abcdefghijklmnopqrstuvwxyz ")}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=max_length)


def tiny_t5(tokenizer: PreTrainedTokenizerFast) -> T5EncoderModel:
    config = T5Config(vocab_size=len(tokenizer.get_vocab()), d_model=32, d_kv=8, d_ff=37, num_layers=2,
                      num_heads=4, relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1)
    return T5EncoderModel(config).eval()


def tiny_flow_vae(channels: int) -> AutoencoderKL:
    return AutoencoderKL(block_out_channels=(32, 32), latent_channels=channels, norm_num_groups=32, sample_size=32,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         shift_factor=0.0609, scaling_factor=1.5035).eval()


def tiny_sd3_pipeline() -> StableDiffusion3Pipeline:
    torch.manual_seed(0)
    clip_1, clip_2, t5 = tiny_tokenizer(), tiny_tokenizer(), tiny_t5_tokenizer()
    transformer = SD3Transformer2DModel(
        sample_size=8, patch_size=1, in_channels=4, num_layers=1, attention_head_dim=8, num_attention_heads=4,
        caption_projection_dim=32, joint_attention_dim=32, pooled_projection_dim=64, out_channels=4,
    ).eval()
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(**SD3_CONFIG), vae=tiny_flow_vae(4),
        text_encoder=CLIPTextModelWithProjection(tiny_clip_config(clip_1)).eval(), tokenizer=clip_1,
        text_encoder_2=CLIPTextModelWithProjection(tiny_clip_config(clip_2)).eval(), tokenizer_2=clip_2,
        text_encoder_3=tiny_t5(t5), tokenizer_3=t5,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_flux_pipeline() -> FluxPipeline:
    torch.manual_seed(0)
    clip, t5 = tiny_tokenizer(), tiny_t5_tokenizer()
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
    ).eval()
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_CONFIG), vae=tiny_flow_vae(4), transformer=transformer,
        text_encoder=CLIPTextModel(tiny_clip_config(clip)).eval(), tokenizer=clip,
        text_encoder_2=tiny_t5(t5), tokenizer_2=t5,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
