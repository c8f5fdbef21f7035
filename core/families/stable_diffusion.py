"""SD1.x and SD2.x: a UNet conditioned on one CLIP text tower, a VAE, DDPM noise (ε or v).

They differ in the text tower (SD1.x: OpenAI CLIP-L in the Hugging Face layout; SD2.x:
OpenCLIP-H in its own layout, conditioned on its penultimate block), the attention
heads (8 everywhere against 64-wide), and what a file says about its training target.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import torch

from ..base_model import BaseModel
from ..errors import CheckpointLayoutError, ModelLoadError
from ..model_loading import (
    CLIP_PREFIX, UNET_PREFIX, VAE_PREFIX, CheckpointFile, default_noise_scheduler, file_fingerprint, folder_noise_scheduler,
    from_pretrained_in, load_tokenizer,
)
from . import ldm
from .base import ModelFamily, Prediction, TextConditioning, TextEncoderSlot

V_PREDICTION, EPSILON = "v_prediction", "epsilon"
# ComfyUI tells an SD2.x v-model from an ε-model by this norm's spread (comfy/supported_models.py, SD20.model_type).
COMFY_SD2_V_KEY = UNET_PREFIX + "output_blocks.11.1.transformer_blocks.0.norm1.bias"
COMFY_SD2_V_SPREAD = 0.09


def declared_prediction(file: CheckpointFile) -> Prediction | None:
    """What a file says of its own target: kohya's modelspec metadata, or the ``v_pred`` marker key
    that v-prediction SDXL finetunes (NoobAI-XL V-Pred and others) carry and ComfyUI honours."""
    declared = file.metadata.get("modelspec.prediction_type", "").strip().lower()
    if declared in ("v", "v_prediction", "epsilon", "eps"):
        kind = V_PREDICTION if declared.startswith("v") else EPSILON
        return Prediction(kind, f"the file's modelspec.prediction_type metadata says {declared}")
    if "v_pred" in file.keys:
        return Prediction(V_PREDICTION, "the file has a v_pred marker key")
    return None


def chosen_prediction(requested: str | None, found: Prediction) -> Prediction:
    if requested:
        return Prediction(requested, "chosen with --prediction")
    return found


def unet_input_channels(file: CheckpointFile) -> int | None:
    key = UNET_PREFIX + "input_blocks.0.0.weight"
    shape = file.shape(key) if key in file.keys else ()
    return shape[1] if len(shape) == 4 else None


def input_channel_refusal(file: CheckpointFile, label: str) -> str | None:
    channels = unet_input_channels(file)
    if channels in (None, 4):
        return None
    kind = {9: "inpainting model", 5: "depth-to-image model"}.get(channels, "model of another kind")
    return f"an {label} {kind} (its UNet takes {channels} input channels; only text-to-image models, with 4, can be trained)"


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


class StableDiffusionFamily(ModelFamily):
    """What SD1.x and SD2.x share: one text encoder, conditioning on its last output."""

    unet_config = "sd15_unet.json"
    text_config = "sd15_text_encoder.json"
    text_prefix = CLIP_PREFIX
    fixed_heads: int | None = ldm.SD1_ATTENTION_HEADS

    def dtype_for_key(self, dtype: torch.dtype):
        def choose(key: str) -> torch.dtype | None:
            if key.startswith(VAE_PREFIX):
                return torch.float32  # see ldm.build_vae
            if key.startswith((UNET_PREFIX, self.text_prefix)):
                return dtype
            return None

        return choose

    def file_prediction(self, file: CheckpointFile, state: dict[str, torch.Tensor]) -> Prediction:
        return declared_prediction(file) or Prediction(EPSILON, f"{self.label} models predict the noise (ε)")

    def build_text_encoder(self, state: dict[str, torch.Tensor], dtype: torch.dtype):
        config = ldm.infer_clip_config(state, self.text_prefix, self.text_config)
        return ldm.build_clip(state, self.text_prefix, config, dtype, "text encoder")

    def load_single_file(self, file, tokenizer_dir, prediction, dtype) -> BaseModel:
        state = file.read(self.dtype_for_key(dtype))
        unet = ldm.build_unet(state, ldm.infer_unet_config(state, self.unet_config, self.fixed_heads), dtype)
        vae = ldm.build_vae(state, ldm.infer_vae_config(state))
        text_encoder = self.build_text_encoder(state, dtype)
        target = chosen_prediction(prediction, self.file_prediction(file, state))
        del state
        slot = self.text_encoders[0]
        tokenizer = load_tokenizer(tokenizer_dir, slot.pad_token)
        check_vocabulary(tokenizer, text_encoder, slot.label)
        return BaseModel(
            unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
            noise_scheduler=default_noise_scheduler(target.kind), family=self.name, source=str(file.path),
            source_hash=file_fingerprint(file.path), prediction_reason=target.reason,
        )

    def load_folder(self, folder: Path, tokenizer_dir, prediction, dtype) -> BaseModel:
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel

        require_subfolders(folder, ("unet", "vae", "text_encoder"))
        try:
            unet = from_pretrained_in(UNet2DConditionModel, folder / "unet", "diffusion_pytorch_model.safetensors", dtype)
            vae = AutoencoderKL.from_pretrained(folder / "vae", local_files_only=True)
            text_encoder = from_pretrained_in(CLIPTextModel, folder / "text_encoder", "model.safetensors", dtype)
        except ModelLoadError:
            raise
        except Exception as error:
            raise ModelLoadError(f"Diffusers folder {folder.name} could not be loaded ({error.__class__.__name__}: {str(error)[:200]}).") from None
        if unet.config.cross_attention_dim != text_encoder.config.hidden_size:
            raise ModelLoadError(f"Diffusers folder {folder.name} is not {self.label}-shaped: its UNet expects text {unet.config.cross_attention_dim} wide, its text encoder gives {text_encoder.config.hidden_size}.")
        slot = self.text_encoders[0]
        tokenizer = load_tokenizer(tokenizer_dir if tokenizer_dir is not None else folder / "tokenizer", slot.pad_token)
        scheduler = folder_noise_scheduler(folder, prediction)
        reason = "chosen with --prediction" if prediction else "the folder's scheduler config"
        return BaseModel(
            unet=unet.eval().requires_grad_(False), vae=vae.eval().requires_grad_(False),
            text_encoder=text_encoder.eval().requires_grad_(False), tokenizer=tokenizer, noise_scheduler=scheduler,
            family=self.name, source=str(folder), source_hash=file_fingerprint(folder / "model_index.json"), prediction_reason=reason,
        )

    def encode_text(self, encoders, tokenizers, captions, device) -> TextConditioning:
        ids = tokenize(tokenizers[0], encoders[0], captions).to(device)
        return {"hidden": encoders[0](ids)[0]}

    def predict(self, denoiser, noisy, timesteps, text, size_ids) -> torch.Tensor:
        return denoiser(noisy, timesteps, text["hidden"].to(noisy.dtype)).sample

    def preview_pipeline(self, denoiser, base, text_encoders, scheduler):
        from diffusers import StableDiffusionPipeline

        return StableDiffusionPipeline(
            vae=base.vae, text_encoder=text_encoders[0], tokenizer=base.tokenizer, unet=denoiser, scheduler=scheduler,
            safety_checker=None, feature_extractor=None, image_encoder=None, requires_safety_checker=False,
        )


def tokenize(tokenizer, encoder, captions: Sequence[str]) -> torch.Tensor:
    config = getattr(encoder, "module", encoder).config  # a DistributedDataParallel wrapper keeps the model in .module
    return tokenizer(
        list(captions), padding="max_length", max_length=config.max_position_embeddings, truncation=True, return_tensors="pt",
    ).input_ids


def check_vocabulary(tokenizer, text_encoder, label: str) -> None:
    if len(tokenizer) != text_encoder.config.vocab_size:
        raise ModelLoadError(
            f"The tokenizer has {len(tokenizer)} tokens but the checkpoint's {label} expects "
            f"{text_encoder.config.vocab_size}; use the tokenizer that belongs to this model."
        )


def require_subfolders(folder: Path, parts: Sequence[str]) -> None:
    for part in parts:
        if not (folder / part).is_dir():
            raise ModelLoadError(f"Diffusers folder {folder} has no {part}/ subfolder.")


class SD1(StableDiffusionFamily):
    name, label = "sd1", "SD1.x"
    text_encoders = (TextEncoderSlot("text_encoder", "tokenizer", "lora_te_", "text encoder"),)

    def claims_keys(self, keys: set[str]) -> bool:
        return any(k.startswith(CLIP_PREFIX) for k in keys) and not any(k.startswith(ldm.SD2_OPEN_CLIP_PREFIX) for k in keys)

    def refusal(self, file: CheckpointFile) -> str | None:
        return input_channel_refusal(file, self.label)

    def claims_folder(self, folder: Path, index: dict[str, Any]) -> bool:
        unet = read_json(folder / "unet" / "config.json")
        return "text_encoder_2" not in index and not unet.get("use_linear_projection") and not unet.get("addition_embed_type")

    def metadata(self, prediction_type: str) -> dict[str, str]:
        return {"ss_base_model_version": "sd_v1", "ss_v2": "False", "modelspec.architecture": "stable-diffusion-v1"}


class SD2(StableDiffusionFamily):
    name, label = "sd2", "SD2.x"
    unet_config = "sd2_unet.json"
    text_config = "sd2_text_encoder.json"
    text_prefix = ldm.SD2_OPEN_CLIP_PREFIX
    fixed_heads = None
    text_encoders = (TextEncoderSlot("text_encoder", "tokenizer", "lora_te_", "text encoder", pad_token="!"),)

    def claims_keys(self, keys: set[str]) -> bool:
        return any(k.startswith(ldm.SD2_OPEN_CLIP_PREFIX) for k in keys)

    def claims_folder(self, folder: Path, index: dict[str, Any]) -> bool:
        unet = read_json(folder / "unet" / "config.json")
        return "text_encoder_2" not in index and bool(unet.get("use_linear_projection")) and not unet.get("addition_embed_type")

    def build_text_encoder(self, state, dtype):
        """OpenCLIP-H conditioned on its penultimate block: the last block is never run, so it is not built
        (diffusers' SD2 text encoder has 23 of the file's 24 blocks, then the final norm, as SD2 used it)."""
        layers = ldm.open_clip_layers(state, self.text_prefix)
        if layers < 2:
            raise CheckpointLayoutError(f"The SD2.x text encoder has {layers} block(s); it needs at least 2 (it conditions on the penultimate).")
        config = ldm.infer_open_clip_config(state, self.text_prefix, self.text_config, layers - 1)
        return ldm.build_open_clip(state, self.text_prefix, config, dtype, "text encoder", with_projection=False)

    def file_prediction(self, file: CheckpointFile, state: dict[str, torch.Tensor]) -> Prediction:
        declared = declared_prediction(file)
        if declared is not None:
            return declared
        norm = state.get(COMFY_SD2_V_KEY)
        if norm is not None and float(norm.float().std(unbiased=False)) > COMFY_SD2_V_SPREAD:
            return Prediction(V_PREDICTION, "ComfyUI's rule for SD2.x files (a 768-v model: the last attention block's norm is spread out)")
        if norm is not None:
            return Prediction(EPSILON, "ComfyUI's rule for SD2.x files (a 512 ε model: the last attention block's norm is not spread out)")
        return Prediction(EPSILON, "an SD2.x file that says nothing of its target (no metadata, no v_pred key) is taken as ε")

    def training_resolution(self, base: BaseModel) -> int:
        return 768 if base.prediction_type == V_PREDICTION else 512

    def refusal(self, file: CheckpointFile) -> str | None:
        if any(k.startswith(("embedder.", "noise_augmentor.")) for k in file.keys):
            return "an SD2.1 unCLIP model (image-conditioned; only text-to-image models can be trained)"
        return input_channel_refusal(file, self.label)

    def metadata(self, prediction_type: str) -> dict[str, str]:
        v = prediction_type == V_PREDICTION
        return {
            "ss_base_model_version": "sd_v2_v" if v else "sd_v2",  # kohya's names (model_util.get_model_version_str_for_sd1_sd2)
            "ss_v2": "True",
            "modelspec.architecture": "stable-diffusion-v2-768-v" if v else "stable-diffusion-v2-512",
        }
