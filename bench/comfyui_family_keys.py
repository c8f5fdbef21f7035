"""Whether ComfyUI's own LoRA loader maps every module of the SDXL / SD2.x files written here (not a test: needs a ComfyUI checkout).

Step 1, with this project's Python: load a full-size single-file checkpoint with our loader, inject adapters
for several setups without training, give them random nonzero values and write the kohya file of each:
    lora.safetensors  LoRA, kohya targets, text encoders too
    locon.safetensors LoRA, kohya+conv targets (LoCon)
    loha.safetensors  LoHa, kohya+conv
    lokr.safetensors  LoKr, kohya+conv
    dora.safetensors  DoRA, kohya targets
        python bench/comfyui_family_keys.py export CHECKPOINT DIR [TOKENIZER_DIR]

Step 2, with ComfyUI's Python (its checkout on sys.path, CPU):
        COMFYUI_DIR=/tmp/comfyui /tmp/comfyvenv/bin/python bench/comfyui_family_keys.py check DIR CHECKPOINT
loads the checkpoint with comfy.sd.load_checkpoint_guess_config and each file with comfy.sd.load_lora_for_models
(what the stock "Load LoRA" node calls), and prints per file the "lora key not loaded" / "NOT LOADED" messages,
how many model and CLIP weights got a patch, how many of the file's modules (per prefix) reached a patched weight,
and how many patched weights ComfyUI's calculate_weight actually changes. A file passes when nothing is left
unloaded and every module of the file patches a weight that changes.

The checkpoints can be made with ComfyUI itself: tests/comfy_checkpoints.py.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections import Counter
from pathlib import Path

DEFAULT_TOKENIZER = "/tmp/comfyui/comfy/sd1_tokenizer"
PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")
RANDOM_STD = 1e-2


def setups():
    from core.lora import LoRASettings

    return {
        "lora": LoRASettings(rank=4, targets="kohya", train_text_encoder=True),
        "locon": LoRASettings(rank=4, targets="kohya+conv", train_text_encoder=True),
        "loha": LoRASettings(rank=4, targets="kohya+conv", adapter="loha", train_text_encoder=True),
        "lokr": LoRASettings(rank=4, targets="kohya+conv", adapter="lokr", train_text_encoder=True),
        "dora": LoRASettings(rank=4, targets="kohya", use_dora=True, train_text_encoder=True),
    }


def prefix_of(stem: str) -> str:
    return next((p for p in sorted(PREFIXES, key=len, reverse=True) if stem.startswith(p)), "other")


def module_counts(keys) -> dict[str, int]:
    """Distinct module stems per kohya prefix (a kohya stem has no dot: what precedes the first one)."""
    return dict(Counter(prefix_of(stem) for stem in {key.split(".", 1)[0] for key in keys}))


def rss_gib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def export(checkpoint: Path, folder: Path, tokenizer_dir: str) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from core import lora as lora_lib
    from core.model_loading import load_base_model
    from core.train_settings import TrainSettings
    from core.trainable import TrainableModels

    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    base = load_base_model(checkpoint, tokenizer_dir, dtype=torch.bfloat16)
    loaded = time.perf_counter()
    print(f"loaded {checkpoint.name} as {base.family} in {loaded - started:.1f} s (peak RSS {rss_gib():.1f} GiB); "
          f"prediction {base.prediction_type}: {base.prediction_reason}", flush=True)
    report = {"family": base.family, "load_s": round(loaded - started, 1), "prediction": base.prediction_type, "files": {}}
    generator = torch.Generator().manual_seed(7)
    for name, settings in setups().items():
        began = time.perf_counter()
        models = TrainableModels(base, settings, TrainSettings(), torch.device("cpu"), torch.bfloat16)
        models.inject()
        with torch.no_grad():
            for model in models.adapted():
                for parameter_name, parameter in model.named_parameters():
                    if parameter.requires_grad:
                        noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float32) * RANDOM_STD
                        if "lora_magnitude_vector" in parameter_name:
                            parameter.add_(noise.to(parameter.dtype))  # DoRA magnitudes: near their init, not near zero
                        else:
                            parameter.copy_(noise.to(parameter.dtype))
        weights = lora_lib.LoRAWeights(models.kohya_tensors(), {})
        lora_lib.save_lora_file(weights, folder / f"{name}.safetensors")
        # Each UNet stem with the diffusers module it adapts, so that `check` can compare our LDM naming
        # (SDXL) with ComfyUI's own diffusers -> LDM map.
        diffusers_names = {
            naming.stem(module_name): module_name
            for model, naming in models.namings() if naming.prefix == lora_lib.UNET_PREFIX
            for module_name, _ in lora_lib.lora_layers(model)
        }
        (folder / f"{name}.modules.json").write_text(json.dumps(diffusers_names, indent=0))
        models.restore()
        counts = module_counts(weights.tensors)
        report["files"][name] = {"modules": counts, "tensors": len(weights.tensors), "seconds": round(time.perf_counter() - began, 1)}
        print(f"{name}: {counts} ({len(weights.tensors)} tensors, {time.perf_counter() - began:.1f} s)", flush=True)
        del models, weights
    report["peak_rss_gib"] = round(rss_gib(), 1)
    (folder / "export.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


class Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def check(folder: Path, checkpoint: Path) -> None:
    comfy_dir = os.environ["COMFYUI_DIR"]
    sys.path.insert(0, comfy_dir)
    sys.argv = [sys.argv[0], "--cpu"]
    import torch
    from safetensors.torch import load_file

    import comfy.options

    comfy.options.enable_args_parsing()  # so that --cpu in sys.argv is read
    import comfy.lora
    import comfy.sd
    import comfy.utils

    collect = Collect()
    logging.getLogger().addHandler(collect)
    started = time.perf_counter()
    # fp16 as stored (ComfyUI would pick fp32 on a CPU): the key mapping does not depend on it, the memory does.
    model, clip, _vae, _ = comfy.sd.load_checkpoint_guess_config(
        str(checkpoint), output_vae=True, output_clip=True, model_options={"dtype": torch.float16}, te_model_options={"dtype": torch.float16},
    )
    loaded = time.perf_counter()
    checkpoint_messages = list(collect.messages)
    model_keys = model.model.state_dict()
    clip_keys = clip.cond_stage_model.state_dict()
    print(f"ComfyUI loaded {checkpoint.name} in {loaded - started:.1f} s: {type(model.model).__name__}, "
          f"{model.model.model_type.name}, text encoder {type(clip.cond_stage_model).__name__}", flush=True)

    key_map: dict[str, str] = {}
    key_map = comfy.lora.model_lora_keys_unet(model.model, key_map)
    key_map = comfy.lora.model_lora_keys_clip(clip.cond_stage_model, key_map)

    report = {"checkpoint": str(checkpoint), "model_class": type(model.model).__name__, "model_type": model.model.model_type.name,
              "clip_class": type(clip.cond_stage_model).__name__, "load_s": round(loaded - started, 1),
              "checkpoint_warnings": [m for m in checkpoint_messages if "missing" in m or "unexpected" in m], "files": {}}
    all_pass = True
    for path in sorted(folder.glob("*.safetensors")):
        lora = load_file(str(path))
        stems = {key.split(".", 1)[0] for key in lora}
        file_modules = Counter(prefix_of(stem) for stem in stems)
        collect.messages.clear()
        new_model, new_clip = comfy.sd.load_lora_for_models(model, clip, lora, 1.0, 1.0)
        not_loaded = [m for m in collect.messages if m.startswith("lora key not loaded")]
        not_patched = [m for m in collect.messages if m.startswith("NOT LOADED")]
        errors = [m for m in collect.messages if "ERROR" in m or "mismatch" in m.lower()]
        model_patches, clip_patches = new_model.patches, new_clip.patcher.patches

        # Which of the file's modules reached a patched weight of the right model.
        reached = Counter()
        unreached = []
        for stem in sorted(stems):
            target = key_map.get(stem)
            patched = target is not None and (
                target in model_patches if prefix_of(stem) == "lora_unet_" else target in clip_patches
            )
            if patched:
                reached[prefix_of(stem)] += 1
            else:
                unreached.append(stem)

        # Our UNet names against ComfyUI's: the diffusers path of each module, mapped by ComfyUI
        # (comfy.utils.unet_to_diffusers), must reach the same weight as the name we wrote.
        names_file = path.with_suffix(".modules.json")
        naming_mismatches, naming_checked = [], 0
        if names_file.is_file():
            for stem, module_name in json.loads(names_file.read_text()).items():
                alias = "lora_unet_" + module_name.replace(".", "_")
                naming_checked += 1
                if key_map.get(alias) != key_map.get(stem):
                    naming_mismatches.append(f"{stem} -> {key_map.get(stem)}, diffusers {module_name} -> {key_map.get(alias)}")

        # ComfyUI's own merge of every patched weight: does it change the weight (no shape error, no no-op)?
        changed, unchanged = 0, []
        collect.messages.clear()
        for patches, weights in ((model_patches, model_keys), (clip_patches, clip_keys)):
            for key, patch_list in patches.items():
                weight = weights[key].float()
                merged = comfy.lora.calculate_weight(patch_list, weight.clone(), key)
                if merged.shape == weight.shape and torch.isfinite(merged).all() and bool((merged - weight).abs().max() > 0):
                    changed += 1
                else:
                    unchanged.append(key)
        merge_errors = [m for m in collect.messages if "ERROR" in m or "mismatch" in m.lower()]

        passed = (not not_loaded and not not_patched and not unreached and not unchanged and not errors and not merge_errors
                  and not naming_mismatches and naming_checked == file_modules["lora_unet_"]
                  and len(model_patches) == file_modules["lora_unet_"]
                  and len(clip_patches) == sum(n for p, n in file_modules.items() if p.startswith("lora_te")))
        all_pass &= passed
        report["files"][path.name] = {
            "pass": passed,
            "file_modules": dict(file_modules),
            "lora_key_not_loaded": len(not_loaded),
            "NOT_LOADED": len(not_patched),
            "model_weights_patched": len(model_patches),
            "clip_weights_patched": len(clip_patches),
            "modules_reaching_a_patch": dict(reached),
            "patched_weights_changed_by_calculate_weight": changed,
            "unet_names_checked_against_comfyui_diffusers_map": naming_checked,
            "unet_name_mismatches": naming_mismatches[:5],
            "unchanged_after_merge": unchanged[:5],
            "examples_not_loaded": not_loaded[:5] + not_patched[:5],
            "examples_unreached": unreached[:5],
            "errors": (errors + merge_errors)[:5],
        }
        print(path.name, json.dumps(report["files"][path.name]), flush=True)
        del new_model, new_clip, lora
    report["all_pass"] = all_pass
    (folder / "check.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    if len(sys.argv) < 4 or sys.argv[1] not in ("export", "check"):
        raise SystemExit("usage: comfyui_family_keys.py export CHECKPOINT DIR [TOKENIZER_DIR] | check DIR CHECKPOINT")
    if sys.argv[1] == "export":
        export(Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else DEFAULT_TOKENIZER)
    else:
        check(Path(sys.argv[2]), Path(sys.argv[3]))
