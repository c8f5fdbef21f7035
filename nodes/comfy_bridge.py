"""The only door from the node layer into ComfyUI.

Every use of ``folder_paths``, ``comfy.*`` and ``server`` goes through the
``ComfyAPI`` object returned by ``api()``. Its imports are lazy, so ``nodes``
imports (and is unit-tested) without ComfyUI; tests install a stand-in with
``use(...)``. Nothing here trains: it only translates.
"""
from __future__ import annotations

import os
import sys
from typing import Any, Callable

LORA_LOGS = "lora_logs"
DIFFUSERS = "diffusers"
# Captioning models, each in ComfyUI/models/<kind>/<name> (wd14_tagger is also the WD14 Tagger node pack's folder name).
BLIP_MODELS, WD14_MODELS, FLORENCE2_MODELS = "blip", "wd14_tagger", "florence2"
PROGRESS_EVENT = "lora_trainer.progress"
CONTEXT_FAMILIES = {768: "sd1", 1024: "sd2", 2048: "sdxl"}  # UNet cross-attention width -> family
BASE_EVENT = "lora_trainer.base"  # {"node": id, "text": the loaded base model's family and training size}


class ComfyAPI:
    """The real ComfyUI, imported on first use."""

    # ------------------------------------------------------------------ folders

    def register_folders(self) -> None:
        """Add models/lora_logs (checkpoints of unfinished runs) and the captioning models' folders to ComfyUI's model
        folders; a folder another node pack or extra_model_paths.yaml registered already is left as it is."""
        import folder_paths

        for kind in (LORA_LOGS, BLIP_MODELS, WD14_MODELS, FLORENCE2_MODELS):
            if kind not in folder_paths.folder_names_and_paths:
                folder_paths.add_model_folder_path(kind, os.path.join(folder_paths.models_dir, kind), is_default=True)

    def folder_paths(self, kind: str) -> list[str]:
        try:
            import folder_paths

            return list(folder_paths.get_folder_paths(kind))
        except (ImportError, KeyError):  # no ComfyUI (introspection, tests) or an unknown folder kind
            return []

    def filename_list(self, kind: str) -> list[str]:
        try:
            import folder_paths

            return list(folder_paths.get_filename_list(kind))
        except (ImportError, KeyError):  # no ComfyUI (introspection, tests) or an unknown folder kind
            return []

    def full_path(self, kind: str, name: str) -> str | None:
        import folder_paths

        return folder_paths.get_full_path(kind, name)

    def input_directory(self) -> str:
        import folder_paths

        return folder_paths.get_input_directory()

    def tokenizer_dir(self) -> str:
        """ComfyUI ships the SD1.x CLIP tokenizer (vocab.json + merges.txt) as comfy/sd1_tokenizer."""
        import comfy  # a namespace package in ComfyUI: no __file__, but a __path__

        for folder in list(getattr(comfy, "__path__", [])):
            candidate = os.path.join(folder, "sd1_tokenizer")
            if os.path.isfile(os.path.join(candidate, "vocab.json")):
                return candidate
        return os.path.join(os.path.dirname(os.path.abspath(comfy.__file__ or "")), "sd1_tokenizer")

    # ------------------------------------------------------------------ memory and device

    def torch_device(self):
        import comfy.model_management as mm

        return mm.get_torch_device()

    def free_memory(self) -> None:
        """Unload every model ComfyUI holds so that training has the accelerator to itself."""
        import comfy.model_management as mm

        mm.unload_all_models()
        mm.soft_empty_cache()

    def empty_cache(self) -> None:
        import comfy.model_management as mm

        mm.soft_empty_cache()

    # ------------------------------------------------------------------ progress, events, interrupt

    def progress_bar(self, total: int, node_id: str | None):
        import comfy.utils

        return comfy.utils.ProgressBar(total, node_id=node_id)

    def send_event(self, event: str, data: dict[str, Any]) -> None:
        from server import PromptServer

        instance = getattr(PromptServer, "instance", None)
        if instance is not None:
            # Broadcast (sid None): a page reloaded mid-run has a new client id and must still get the chart.
            instance.send_sync(event, data, None)

    def interrupt_exception(self) -> type[BaseException]:
        """What ComfyUI raises on Cancel, also from inside ProgressBar.update_absolute (its progress hook checks)."""
        import comfy.model_management as mm

        return mm.InterruptProcessingException

    def interrupted(self) -> bool:
        import comfy.model_management as mm

        return bool(mm.processing_interrupted())

    def raise_interrupted(self) -> None:
        """End the node the way ComfyUI's own Cancel does (the prompt shows as interrupted, not failed)."""
        import comfy.model_management as mm

        raise mm.InterruptProcessingException()

    def add_route(self, path: str, handler: Callable) -> bool:
        """Register a GET route on ComfyUI's server; False when there is no server (CLI, tests)."""
        # Only a server that is already running counts: importing ComfyUI's server module from
        # elsewhere (a script, a test) would start up all of ComfyUI.
        server = sys.modules.get("server")
        instance = getattr(getattr(server, "PromptServer", None), "instance", None)
        if instance is None:
            return False
        from aiohttp import web

        async def route(request):
            status, body = handler(dict(request.match_info), dict(request.query))
            return web.json_response(body, status=status)

        instance.routes.get(path)(route)
        return True

    # ------------------------------------------------------------------ LoRA on ComfyUI models

    def model_family(self, model) -> str | None:
        """Our family name for a ComfyUI MODEL, from the text width its UNet reads; None for what we do not train."""
        config = getattr(getattr(getattr(model, "model", None), "model_config", None), "unet_config", None) or {}
        return CONTEXT_FAMILIES.get(config.get("context_dim"))

    def apply_lora(self, model, clip, tensors: dict, strength_model: float, strength_clip: float):
        """Patch MODEL/CLIP with ComfyUI's own LoRA loader (the same path as its Load LoRA node)."""
        import comfy.sd

        return comfy.sd.load_lora_for_models(model, clip, dict(tensors), strength_model, strength_clip)

    # ------------------------------------------------------------------ sampling (the comparison grid)

    # What the sampler and scheduler widgets offer when ComfyUI is absent (introspection, tests):
    # ComfyUI's long-standing names, so a saved workflow's choice is still valid inside ComfyUI.
    FALLBACK_SAMPLERS = ("euler", "euler_ancestral", "heun", "dpm_2", "dpm_2_ancestral", "lms", "dpmpp_2s_ancestral",
                         "dpmpp_sde", "dpmpp_2m", "dpmpp_2m_sde", "ddim", "uni_pc")
    FALLBACK_SCHEDULERS = ("normal", "karras", "exponential", "sgm_uniform", "simple", "ddim_uniform", "beta")

    def sampler_names(self) -> list[str]:
        """The stock KSampler's sampler choices."""
        try:
            import comfy.samplers
        except ImportError:
            return list(self.FALLBACK_SAMPLERS)
        return list(comfy.samplers.KSampler.SAMPLERS)

    def scheduler_names(self) -> list[str]:
        """The stock KSampler's scheduler choices."""
        try:
            import comfy.samplers
        except ImportError:
            return list(self.FALLBACK_SCHEDULERS)
        return list(comfy.samplers.KSampler.SCHEDULERS)

    def encode_prompt(self, clip, text: str):
        """CONDITIONING for one prompt, made as the stock CLIP Text Encode node makes it."""
        return clip.encode_from_tokens_scheduled(clip.tokenize(text))

    def sample(self, model, positive, negative, *, seed: int, steps: int, cfg: float, sampler_name: str, scheduler: str, width: int, height: int):
        """One latent from an empty latent at denoise 1, by the stock KSampler's own path
        (EmptyLatentImage, then common_ksampler: the same noise from the seed, the same comfy.sample.sample)."""
        import torch

        import comfy.model_management as mm
        import comfy.sample
        import comfy.utils

        latent = torch.zeros([1, 4, height // 8, width // 8], device=mm.intermediate_device())
        latent = comfy.sample.fix_empty_latent_channels(model, latent)
        noise = comfy.sample.prepare_noise(latent, seed)
        # No step callback: the node's bar counts cells, and a per-step bar would overwrite it.
        return comfy.sample.sample(model, noise, steps, cfg, sampler_name, scheduler, positive, negative, latent, denoise=1.0,
                                   disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)

    def decode(self, vae, samples):
        """IMAGE [B, H, W, C] from a latent, as the stock VAE Decode node makes it."""
        images = vae.decode(samples)
        if images.ndim == 5:  # video VAEs give frames; one image batch, as VAE Decode does
            images = images.reshape(-1, images.shape[-3], images.shape[-2], images.shape[-1])
        return images

    def load_lora_file(self, path) -> tuple[dict, dict]:
        """(tensors, metadata) of a LoRA file, read as the stock Load LoRA node reads it (safe loading only)."""
        import comfy.utils

        try:
            tensors, metadata = comfy.utils.load_torch_file(str(path), safe_load=True, return_metadata=True)
        except TypeError:  # a ComfyUI from before return_metadata: no metadata, the family then comes from the keys
            tensors, metadata = comfy.utils.load_torch_file(str(path), safe_load=True), None
        return tensors, dict(metadata or {})


_api: Any = None


def api():
    """The ComfyUI surface in use: the real one unless a stand-in was installed."""
    global _api
    if _api is None:
        _api = ComfyAPI()
    return _api


def use(replacement) -> Any:
    """Install a stand-in (tests); returns the previous API so it can be restored."""
    global _api
    previous, _api = _api, replacement
    return previous


def comfy_available() -> bool:
    """True inside a running ComfyUI (folder_paths importable) — checked without importing heavy modules."""
    try:
        import folder_paths  # noqa: F401
    except ImportError:
        return False
    return True
