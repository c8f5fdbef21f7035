"""Seconds per step of the full-size SD1.5 architecture (random weights): TE LoRA off/on, previews.

    python bench/training_depth.py --workdir /tmp/depth_bench [--steps 6] [--resolution 256]

The tokenizer is synthetic but CLIP-sized (49408 tokens, specials at 49406/49407)
so the text encoder has SD1.5's exact shape. Prints one JSON object per run.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CLIP_VOCAB_SIZE = 49408


def write_clip_sized_tokenizer(folder: Path) -> Path:
    """The tiny BPE tokenizer padded with unused tokens to CLIP's 49408, specials last as in CLIP."""
    from core import tiny

    tiny.write_tiny_tokenizer(folder)
    vocab = json.loads((folder / "vocab.json").read_text())
    specials = ["<|startoftext|>", "<|endoftext|>"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda item: item[1]) if t not in specials]
    tokens += [f"unused{i}</w>" for i in range(CLIP_VOCAB_SIZE - len(specials) - len(tokens))]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens + specials)}, ensure_ascii=False))
    return folder


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--sample-steps", type=int, default=20)
    parser.add_argument("--runs", default="te_off,te_on,previews")
    args = parser.parse_args()

    import torch

    from core import tiny
    from core.dataset import load_folder_dataset
    from core.lora import LoRASettings
    from core.training import STEP_PHASES, TrainSettings, train

    workdir = Path(args.workdir)
    tokenizer_dir = write_clip_sized_tokenizer(workdir / "tokenizer")
    data_dir = workdir / "data"
    if not data_dir.exists():
        tiny.write_synthetic_dataset(data_dir, count=2, size=args.resolution)
    started = time.perf_counter()
    base = tiny.build_base_model(tokenizer_dir, full_size=True)
    print(json.dumps({"built_seconds": round(time.perf_counter() - started, 1), "torch_threads": torch.get_num_threads(),
                      "unet_params_m": round(sum(p.numel() for p in base.unet.parameters()) / 1e6, 1)}), flush=True)
    dataset = load_folder_dataset(data_dir)
    common = dict(steps=args.steps, learning_rate=1e-4, resolution=args.resolution, batch_size=1, precision="fp32",
                  lr_scheduler="constant", random_flip=False)
    runs = {
        "te_off": (LoRASettings(rank=args.rank), TrainSettings(**common)),
        "te_on": (LoRASettings(rank=args.rank, train_text_encoder=True), TrainSettings(**common)),
        "previews": (LoRASettings(rank=args.rank), TrainSettings(**{**common, "steps": max(args.steps, 10)}, sample_every=10,
                     sample_prompts=("a red circle on a white background",), sample_steps=args.sample_steps)),
    }
    for name in args.runs.split(","):
        lora_settings, settings = runs[name]
        started = time.perf_counter()
        result = train(base, dataset, lora_settings, settings, device="cpu", checkpoint_dir=workdir / f"ck_{name}")
        wall = time.perf_counter() - started
        phases = {k: round(v, 1) for k, v in result.phase_seconds.items()}
        train_seconds = sum(v for k, v in result.phase_seconds.items() if k in STEP_PHASES)
        print(json.dumps({
            "run": name, "steps": result.steps, "seconds_per_step_median": round(result.seconds_per_step, 2),
            "seconds_per_step_with_previews": round((train_seconds + result.phase_seconds.get("sample", 0.0)) / result.steps, 2),
            "wall_seconds": round(wall, 1), "phase_seconds": phases, "samples": len(result.samples),
        }), flush=True)


if __name__ == "__main__":
    main()
