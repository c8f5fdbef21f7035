"""SDXL: a UNet conditioned on two text towers and on each image's size and crop.

Conditioning, as SDXL was trained and as ComfyUI samples it: the penultimate hidden
states of CLIP-L (768) and OpenCLIP bigG (1280) concatenated (2048), bigG's pooled and
projected output (1280), and ``time_ids`` = original height/width, crop top/left and
target height/width in px, per image. kohya names the UNet's LoRA modules by their
original LDM paths (``lora_unet_input_blocks_4_1_...``) and the towers ``lora_te1_`` and
``lora_te2_``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..base_model import BaseModel
from ..errors import CheckpointLayoutError, ModelLoadError
from ..model_loading import UNET_PREFIX, VAE_PREFIX, CheckpointFile, default_noise_scheduler, file_fingerprint, folder_noise_scheduler, from_pretrained_in, load_tokenizer
from . import ldm
from .base import ModelFamily, Prediction, TextConditioning, TextEncoderSlot
from .stable_diffusion import EPSILON, chosen_prediction, check_vocabulary, declared_prediction, input_channel_refusal, read_json, require_subfolders, tokenize

SIZE_NUMBERS = 6  # original h, w; crop top, left; target h, w


class SDXL(ModelFamily):
    name, label = "sdxl", "SDXL"
    default_bucket = True
    checkpointing_below_bytes = 15 * 2**30  # 1024 px without it: 13.5 GB projected (docs/families.md), so 12 GB cards need it, 16 GB ones do not
    text_encoders = (
        TextEncoderSlot("text_encoder", "tokenizer", "lora_te1_", "CLIP-L text encoder"),
        TextEncoderSlot("text_encoder_2", "tokenizer_2", "lora_te2_", "OpenCLIP bigG text encoder", pad_token="!"),
    )

    def claims_keys(self, keys: set[str]) -> bool:
        return any(k.startswith("conditioner.embedders.") for k in keys) or UNET_PREFIX + "label_emb.0.0.weight" in keys

    def refusal(self, file: CheckpointFile) -> str | None:
        keys = set(file.keys)
        if not any(k.startswith(ldm.SDXL_CLIP_L_PREFIX) for k in keys) and any(k.startswith("conditioner.embedders.0.model.") for k in keys):
            return "an SDXL refiner (it only refines the base model's images); train LoRAs on the SDXL base or a model made from it"
        if not any(k.startswith(ldm.SDXL_OPEN_CLIP_PREFIX) for k in keys):
            return "an SDXL checkpoint without its OpenCLIP bigG text encoder (no conditioner.embedders.1.model.* keys); use a full checkpoint"
        return input_channel_refusal(file, self.label)

    def claims_folder(self, folder: Path, index: dict[str, Any]) -> bool:
        return "text_encoder_2" in index or read_json(folder / "unet" / "config.json").get("addition_embed_type") == "text_time"

    def training_resolution(self, base: BaseModel) -> int:
        return 1024

    def dtype_for_key(self, dtype: torch.dtype):
        def choose(key: str) -> torch.dtype | None:
            if key.startswith(VAE_PREFIX):
                return torch.float32  # see ldm.build_vae; SDXL's VAE overflows in fp16 too
            if key.startswith((UNET_PREFIX, ldm.SDXL_CLIP_L_PREFIX, ldm.SDXL_OPEN_CLIP_PREFIX)):
                return dtype
            return None

        return choose

    # ------------------------------------------------------------------ loading

    def load_single_file(self, file, tokenizer_dir, prediction, dtype) -> BaseModel:
        state = file.read(self.dtype_for_key(dtype))
        clip_config = ldm.infer_clip_config(state, ldm.SDXL_CLIP_L_PREFIX, "sd15_text_encoder.json")
        text_encoder = ldm.build_clip(state, ldm.SDXL_CLIP_L_PREFIX, clip_config, dtype, "CLIP-L text encoder")
        big_config = ldm.infer_open_clip_config(
            state, ldm.SDXL_OPEN_CLIP_PREFIX, "sdxl_text_encoder_2.json", ldm.open_clip_layers(state, ldm.SDXL_OPEN_CLIP_PREFIX),
        )
        text_encoder_2 = ldm.build_open_clip(state, ldm.SDXL_OPEN_CLIP_PREFIX, big_config, dtype, "OpenCLIP bigG text encoder", with_projection=True)
        unet_config = ldm.infer_unet_config(state, "sdxl_unet.json", fixed_heads=None)
        unet_config["addition_time_embed_dim"] = self._size_embedding_width(unet_config, big_config["projection_dim"])
        unet = ldm.build_unet(state, unet_config, dtype)
        vae = ldm.build_vae(state, ldm.infer_vae_config(state, "sdxl_vae.json"))
        target = chosen_prediction(prediction, declared_prediction(file) or Prediction(EPSILON, "SDXL base models predict the noise (ε)"))
        del state
        tokenizer, tokenizer_2 = (load_tokenizer(tokenizer_dir, slot.pad_token) for slot in self.text_encoders)
        check_vocabulary(tokenizer, text_encoder, self.text_encoders[0].label)
        check_vocabulary(tokenizer_2, text_encoder_2, self.text_encoders[1].label)
        return BaseModel(
            unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
            noise_scheduler=default_noise_scheduler(target.kind), family=self.name, source=str(file.path),
            source_hash=file_fingerprint(file.path), prediction_reason=target.reason,
        )

    @staticmethod
    def _size_embedding_width(unet_config: dict[str, Any], pooled_width: int) -> int:
        """The width of each size number's embedding: label_emb takes the pooled text and six of them."""
        extra = unet_config.get("projection_class_embeddings_input_dim", 0) - pooled_width
        if unet_config.get("addition_embed_type") != "text_time" or extra <= 0 or extra % SIZE_NUMBERS:
            raise CheckpointLayoutError(
                f"The SDXL UNet's size conditioning takes {unet_config.get('projection_class_embeddings_input_dim')} numbers, "
                f"which does not fit a pooled text of {pooled_width} plus six size embeddings."
            )
        return extra // SIZE_NUMBERS

    def load_folder(self, folder: Path, tokenizer_dir, prediction, dtype) -> BaseModel:
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTextModelWithProjection

        if "text_encoder" not in read_json(folder / "model_index.json"):
            raise ModelLoadError(f"Diffusers folder {folder.name} is an SDXL refiner (no CLIP-L text encoder); train LoRAs on the SDXL base.")
        require_subfolders(folder, ("unet", "vae", "text_encoder", "text_encoder_2"))
        try:
            unet = from_pretrained_in(UNet2DConditionModel, folder / "unet", "diffusion_pytorch_model.safetensors", dtype)
            vae = AutoencoderKL.from_pretrained(folder / "vae", local_files_only=True)
            text_encoder = from_pretrained_in(CLIPTextModel, folder / "text_encoder", "model.safetensors", dtype)
            text_encoder_2 = from_pretrained_in(CLIPTextModelWithProjection, folder / "text_encoder_2", "model.safetensors", dtype)
        except ModelLoadError:
            raise
        except Exception as error:
            raise ModelLoadError(f"Diffusers folder {folder.name} could not be loaded ({error.__class__.__name__}: {str(error)[:200]}).") from None
        if unet.config.in_channels != 4:
            raise ModelLoadError(f"Diffusers folder {folder.name} is an SDXL inpainting model ({unet.config.in_channels} input channels); only text-to-image models can be trained.")
        tokenizers = []
        for slot, subfolder in zip(self.text_encoders, ("tokenizer", "tokenizer_2")):
            tokenizers.append(load_tokenizer(tokenizer_dir if tokenizer_dir is not None else folder / subfolder, slot.pad_token))
        return BaseModel(
            unet=unet.eval().requires_grad_(False), vae=vae.eval().requires_grad_(False),
            text_encoder=text_encoder.eval().requires_grad_(False), tokenizer=tokenizers[0],
            text_encoder_2=text_encoder_2.eval().requires_grad_(False), tokenizer_2=tokenizers[1],
            noise_scheduler=folder_noise_scheduler(folder, prediction), family=self.name, source=str(folder),
            source_hash=file_fingerprint(folder / "model_index.json"),
            prediction_reason="chosen with --prediction" if prediction else "the folder's scheduler config",
        )

    # ------------------------------------------------------------------ conditioning

    def encode_text(self, encoders, tokenizers, captions, device) -> TextConditioning:
        hidden, pooled = [], None
        for encoder, tokenizer in zip(encoders, tokenizers):
            output = encoder(tokenize(tokenizer, encoder, captions).to(device), output_hidden_states=True)
            hidden.append(output.hidden_states[-2])
            pooled = getattr(output, "text_embeds", None)
        return {"hidden": torch.cat(hidden, dim=-1), "pooled": pooled}

    def predict(self, denoiser, noisy, timesteps, text, size_ids) -> torch.Tensor:
        conditions = {"text_embeds": text["pooled"].to(noisy.dtype), "time_ids": size_ids.to(noisy.device, noisy.dtype)}
        return denoiser(noisy, timesteps, text["hidden"].to(noisy.dtype), added_cond_kwargs=conditions).sample

    # ------------------------------------------------------------------ the LoRA file

    def denoiser_naming(self, denoiser):
        from ..ldm_export import unet_key_to_ldm

        config = denoiser.config
        return lambda name: unet_key_to_ldm(name + ".weight", config)[len(UNET_PREFIX):-len(".weight")]

    def metadata(self, prediction_type: str) -> dict[str, str]:
        return {"ss_base_model_version": "sdxl_base_v1-0", "ss_v2": "False", "modelspec.architecture": "stable-diffusion-xl-v1-base"}

    def preview_pipeline(self, denoiser, base, text_encoders, scheduler):
        from diffusers import StableDiffusionXLPipeline

        return StableDiffusionXLPipeline(
            vae=base.vae, text_encoder=text_encoders[0], text_encoder_2=text_encoders[1], tokenizer=base.tokenizer,
            tokenizer_2=base.tokenizer_2, unet=denoiser, scheduler=scheduler, add_watermarker=False,
        )
