"""The node suite as ComfyUI loads it, and a small stand-in of the ComfyUI API surface.

ComfyUI imports the repository root as a package (named after its folder), so
``nodes`` reaches ``core`` through relative imports; ``load_suite`` does the
same here. ``StandinComfy`` replaces ``nodes.comfy_bridge.ComfyAPI``: model
folders in a temp dir, a recording progress bar and websocket, an interrupt
flag, and a LoRA patcher that applies kohya keys the way ComfyUI maps them.
"""
from __future__ import annotations

import copy
import importlib.util
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "lora_trainer_suite"


def load_suite():
    """Import the repository root as a package, exactly as ComfyUI's custom-node loader does."""
    if PACKAGE in sys.modules:
        return sys.modules[PACKAGE]
    spec = importlib.util.spec_from_file_location(PACKAGE, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = module
    spec.loader.exec_module(module)
    return module


class Interrupted(Exception):
    """What the stand-in raises where ComfyUI raises InterruptProcessingException."""


class RecordingBar:
    def __init__(self, owner, total, node_id):
        self.owner, self.total, self.node_id, self.updates = owner, total, node_id, []

    def update_absolute(self, value, total=None, preview=None):
        if self.owner.interrupt_at_step is not None and value >= self.owner.interrupt_at_step:
            self.owner.interrupt = True  # as if the user pressed Cancel while this step ran
        self.updates.append((value, total, preview))
        if self.owner.interrupt:
            self.owner.interrupt = False  # ComfyUI's progress hook clears the flag as it throws
            raise Interrupted()


class StandinComfy:
    def __init__(self, root: Path, tokenizer_dir: Path):
        self.root = Path(root)
        self.models = self.root / "models"
        self.folders = {kind: [str(self.models / kind)] for kind in ("checkpoints", "diffusers", "loras", "lora_logs")}
        for paths in self.folders.values():
            os.makedirs(paths[0], exist_ok=True)
        self.input_dir = self.root / "input"
        self.input_dir.mkdir(parents=True, exist_ok=True)
        self.tokenizer = str(tokenizer_dir)
        self.events, self.bars, self.calls = [], [], []
        self.interrupt, self.interrupt_at_step = False, None
        self.routes = {}
        self.unloaded_keys: list[str] = []

    # folders
    def register_folders(self):
        self.calls.append("register_folders")

    def folder_paths(self, kind):
        return list(self.folders.get(kind, []))

    def filename_list(self, kind):
        names = []
        for root in self.folders.get(kind, []):
            for path in sorted(Path(root).rglob("*")):
                if path.is_file():
                    names.append(path.relative_to(root).as_posix())
        return names

    def full_path(self, kind, name):
        for root in self.folders.get(kind, []):
            candidate = Path(root) / name
            if candidate.is_file():
                return str(candidate)
        return None

    def input_directory(self):
        return str(self.input_dir)

    def tokenizer_dir(self):
        return self.tokenizer

    # memory
    def torch_device(self):
        import torch

        return torch.device("cpu")

    def free_memory(self):
        self.calls.append("free_memory")

    def empty_cache(self):
        self.calls.append("empty_cache")

    # progress
    def progress_bar(self, total, node_id):
        bar = RecordingBar(self, total, node_id)
        self.bars.append(bar)
        return bar

    def send_event(self, event, data):
        self.events.append((event, copy.deepcopy(data)))

    def interrupt_exception(self):
        return Interrupted

    def interrupted(self):
        return self.interrupt

    def raise_interrupted(self):
        self.interrupt = False  # ComfyUI clears the flag once the prompt has ended
        raise Interrupted()

    def add_route(self, path, handler):
        self.routes[path] = handler
        return True

    # LoRA
    def model_family(self, model):
        return getattr(model, "lora_trainer_family", None)  # tests mark a stand-in MODEL with the family it plays

    def apply_lora(self, model, clip, tensors, strength_model, strength_clip):
        """Patch a copy of a diffusers UNet (our stand-in MODEL) by kohya key, recording keys that map to nothing."""
        import torch

        from core.lora import UNET_PREFIX, kohya_stem

        patched = copy.deepcopy(model)
        modules = {kohya_stem(name, UNET_PREFIX): module for name, module in patched.named_modules()}
        stems = {key.rsplit(".", 2)[0] for key in tensors if key.endswith(".lora_down.weight")}
        for stem in sorted(stems):
            if not stem.startswith(UNET_PREFIX):
                continue
            module = modules.get(stem)
            if module is None:
                self.unloaded_keys.append(stem)
                continue
            down, up = tensors[f"{stem}.lora_down.weight"], tensors[f"{stem}.lora_up.weight"]
            rank = down.shape[0]
            alpha = float(tensors.get(f"{stem}.alpha", torch.tensor(float(rank))))
            delta = (up.flatten(1) @ down.flatten(1)).reshape(module.weight.shape) * (alpha / rank) * strength_model
            with torch.no_grad():
                module.weight += delta.to(module.weight.dtype)
        return patched, clip

    # sampling (the comparison grid): deterministic, and dependent on the UNet's weights, the prompt and the seed
    @property
    def drawn(self) -> list:
        """(prompt, seed) of every image sampled, in order."""
        return self.__dict__.setdefault("_drawn", [])

    def sampler_names(self):
        return ["euler", "euler_ancestral", "dpmpp_2m"]

    def scheduler_names(self):
        return ["normal", "karras"]

    def encode_prompt(self, clip, text):
        return {"prompt": text}

    def sample(self, model, positive, negative, *, seed, steps, cfg, sampler_name, scheduler, width, height):
        """One UNet call on seeded noise with hashed prompt embeddings, guided like CFG (MODEL is a diffusers UNet)."""
        import hashlib

        import torch

        def embedding(text):
            digest = int(hashlib.sha256(text.encode()).hexdigest()[:15], 16)
            return torch.randn(1, 8, model.config.cross_attention_dim, generator=torch.Generator().manual_seed(digest))

        self.drawn.append((positive["prompt"], seed))
        noise = torch.randn(1, model.config.in_channels, height // 8, width // 8, generator=torch.Generator().manual_seed(seed))
        timestep = torch.tensor([500])
        with torch.no_grad():
            cond = model(noise, timestep, embedding(positive["prompt"])).sample
            uncond = model(noise, timestep, embedding(negative["prompt"])).sample
        return noise - 0.5 * (uncond + cfg * (cond - uncond))

    def decode(self, vae, samples):
        """An 8x larger RGB image from the first three latent channels (IMAGE layout [B, H, W, C], 0..1)."""
        import torch

        upscaled = torch.nn.functional.interpolate(samples[:, :3].float(), scale_factor=8, mode="nearest")
        return torch.sigmoid(upscaled).permute(0, 2, 3, 1).contiguous()

    def load_lora_file(self, path):
        from core.lora import read_lora_file

        weights = read_lora_file(path)
        return weights.tensors, weights.metadata
