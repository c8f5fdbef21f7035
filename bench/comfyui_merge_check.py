"""How a peft DoRA, LoHa or LoKr trained here merges in ComfyUI's own code (not a test: needs a ComfyUI checkout).

Step 1, with this project's Python: train a small DoRA, LoHa and LoKr on the tiny model and write
    dora.safetensors      the DoRA as saved (dora_scale = m·‖W‖/‖W+sΔW‖, see core/lora.py)
    dora_raw.safetensors  the same with peft's magnitude m saved unchanged as dora_scale
    loha.safetensors      the LoHa as saved (LyCORIS hada_* keys)
    lokr.safetensors      the LoKr as saved (LyCORIS lokr_* keys)
    reference_<kind>.safetensors  base weight W and peft's merged weight W' per module stem
        python bench/comfyui_merge_check.py export DIR

Step 2, with ComfyUI's Python (its checkout on sys.path, CPU):
        COMFYUI_DIR=/tmp/comfyui /tmp/comfyvenv/bin/python bench/comfyui_merge_check.py compare DIR
merges each file with comfy.lora.load_lora + the adapters' calculate_weight and prints,
per file, the largest |W'_comfy - W'_peft| and that relative to the largest |W'_peft - W|.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

# file -> the reference it must merge to
FILES = {"dora.safetensors": "reference_dora.safetensors", "dora_raw.safetensors": "reference_dora.safetensors",
         "loha.safetensors": "reference_loha.safetensors", "lokr.safetensors": "reference_lokr.safetensors"}


def export(folder: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from safetensors.torch import save_file

    from core import lora as lora_lib
    from core import tiny
    from core.dataset import load_folder_dataset
    from core.training import Trainer, TrainSettings

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = tiny.write_tiny_tokenizer(folder / "tokenizer")
    base = tiny.build_base_model(tokenizer)
    dataset = load_folder_dataset(tiny.write_synthetic_dataset(folder / "data", count=6, size=64))

    class Exporting(Trainer):
        """Keeps W and peft's merged W' of every adapted module (and, for DoRA, peft's raw magnitudes)."""

        def _restore_base(self):
            self.reference, self.raw_scales = {}, {}
            for model, prefix in ((self.unet, lora_lib.UNET_PREFIX), (self.text_encoder, lora_lib.TEXT_ENCODER_PREFIX)):
                for name, layer in lora_lib.lora_layers(model):
                    stem = lora_lib.kohya_stem(name, prefix)
                    weight = layer.get_base_layer().weight.detach().double()
                    if lora_lib.adapter_type(layer) != "lora":
                        merged = weight + layer.get_delta_weight(lora_lib.ADAPTER_NAME).detach().double()
                    else:
                        weight, delta, scaling = lora_lib._layer_delta(layer)
                        combined = weight + scaling * delta
                        magnitude = lora_lib._magnitude(layer).detach().double().reshape(weight.shape[0], *[1] * (weight.ndim - 1))
                        merged = combined * magnitude / lora_lib._row_norms(combined)
                        self.raw_scales[f"{stem}.dora_scale"] = magnitude.float().contiguous()
                    self.reference[f"{stem}.base"] = weight.float().contiguous()
                    self.reference[f"{stem}.merged"] = merged.float().contiguous()
            super()._restore_base()

    modules = {}
    for kind, settings in (
        ("dora", lora_lib.LoRASettings(rank=4, targets="kohya+conv", use_dora=True, train_text_encoder=True)),
        ("loha", lora_lib.LoRASettings(rank=4, targets="kohya+conv", adapter="loha", train_text_encoder=True)),
        # rank 2 with alpha 1 for the layers (LoKr's second factor a low-rank pair), conv rank 4 (both factors whole)
        ("lokr", lora_lib.LoRASettings(rank=2, alpha=1.0, targets="kohya+conv", conv_rank=4, conv_alpha=1.5, adapter="lokr", train_text_encoder=True)),
    ):
        trainer = Exporting(base, dataset, settings, TrainSettings(steps=30, learning_rate=1e-2, resolution=64, batch_size=2, lr_scheduler="constant", seed=1))
        result = trainer.run()
        lora_lib.save_lora_file(result.lora, folder / f"{kind}.safetensors")
        if trainer.raw_scales:
            raw = dict(result.lora.tensors, **trainer.raw_scales)
            lora_lib.save_lora_file(lora_lib.LoRAWeights(raw, result.lora.metadata), folder / f"{kind}_raw.safetensors")
        save_file(trainer.reference, str(folder / f"reference_{kind}.safetensors"))
        modules[kind] = len(trainer.reference) // 2
    print(json.dumps({"modules": modules, "folder": str(folder)}))


def compare(folder: Path) -> None:
    comfy_dir = os.environ["COMFYUI_DIR"]
    sys.path.insert(0, comfy_dir)
    sys.argv = [sys.argv[0], "--cpu"]
    from safetensors.torch import load_file

    import comfy.options

    comfy.options.enable_args_parsing()  # so that --cpu in sys.argv is read
    import comfy.lora

    report = {}
    for name, reference_name in FILES.items():
        reference = load_file(str(folder / reference_name))
        stems = sorted({k.rsplit(".", 1)[0] for k in reference})
        key_map = {stem: f"{stem}.weight" for stem in stems}
        patches = comfy.lora.load_lora(load_file(str(folder / name)), key_map)
        worst, worst_relative = 0.0, 0.0
        for stem in stems:
            adapter = patches[f"{stem}.weight"]
            weight = reference[f"{stem}.base"].clone()
            merged = adapter.calculate_weight(weight, f"{stem}.weight", 1.0, 1.0, None, lambda a: a)
            peft = reference[f"{stem}.merged"]
            error = float((merged - peft).abs().max())
            change = float((peft - reference[f"{stem}.base"]).abs().max())
            worst = max(worst, error)
            worst_relative = max(worst_relative, error / max(change, 1e-12))
        report[name] = {"max_abs_weight_error": worst, "max_error_relative_to_update": worst_relative, "modules": len(stems)}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    {"export": export, "compare": compare}[sys.argv[1]](Path(sys.argv[2]))
