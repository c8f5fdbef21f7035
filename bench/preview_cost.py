"""Seconds one training preview costs on the full-size SD1.5 architecture (random weights), CPU.

    python bench/preview_cost.py --workdir /tmp/depth_bench [--size 256] [--steps 20]

Times core.sampling.generate_previews on the loaded components (the trainer's own
path), so "seconds per step with previews every N steps" = training s/step + this / N.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    import torch

    from core import tiny
    from core.sampling import generate_previews
    from training_depth import write_clip_sized_tokenizer

    base = tiny.build_base_model(write_clip_sized_tokenizer(Path(args.workdir) / "tokenizer_preview"), full_size=True)
    started = time.perf_counter()
    images = generate_previews(base.unet, base.vae, base.text_encoder, base.tokenizer, base.noise_scheduler,
                               ["a red circle on a white background"], 0, args.steps, args.size, 7.5, torch.device("cpu"))
    seconds = time.perf_counter() - started
    print(json.dumps({"preview_seconds": round(seconds, 1), "size": args.size, "sampling_steps": args.steps, "image": list(images[0].size)}))


if __name__ == "__main__":
    main()
