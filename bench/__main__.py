"""Speed and memory benchmark: ``python -m bench`` (or ``./dev bench``).

Builds the models it needs (tiny ones, and the full-size SD1.5 and SDXL
architectures with random weights; nothing is downloaded), runs our trainer for
a fixed number of steps per configuration, each in its own process, and prints
one JSON line per configuration. With ``REFERENCE_SCRIPT`` pointing at a copy of
diffusers' ``examples/text_to_image/train_text_to_image_lora.py`` (SD1.x models)
or ``REFERENCE_SCRIPT_SDXL`` at ``train_text_to_image_lora_sdxl.py`` (SDXL
models) it also runs that script on the same model, images and settings in the
same invocation and adds the ratios ours/reference. ``--repeats N`` alternates the runs N times and
ends with one summary line per variant (median and range of the per-round
ratios), since a shared machine drifts by 10 % or more between runs.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.assets import ARCHITECTURES, MODELS, build_data, build_model

# The environment variable naming each family's diffusers example script.
REFERENCE_SCRIPT_VARIABLES = {"sd1": "REFERENCE_SCRIPT", "sdxl": "REFERENCE_SCRIPT_SDXL"}
# ours/reference, each from one measure of both JSON lines
RATIOS = {"ratio_seconds_per_step": "seconds_per_step", "ratio_peak_memory": "peak_memory_bytes",
          "ratio_seconds_to_first_step": "seconds_to_first_step"}

ROOT = Path(__file__).resolve().parent.parent
VARIANT_FLAGS = {
    "default": [], "no-cache": ["--no-cache"], "onednn-convs": ["--onednn-convs"], "mkl-linears": ["--mkl-linears"],
    "checkpointing": ["--gradient-checkpointing"], "adamw8bit": ["--optimizer", "adamw8bit"], "compile": ["--compile"],
    "buckets": ["--buckets"], "bf16-attention": ["--bf16-attention"],
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=[*ARCHITECTURES, "all"], default="tiny",
                        help="all: tiny and sd15; the SD1 models run beside REFERENCE_SCRIPT, sdxl and tiny-sdxl beside REFERENCE_SCRIPT_SDXL, sd2 ours only")
    parser.add_argument("--resolution", type=int, default=None, help="default: 64 for the tiny models, 256 for the full-size ones")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2, help="steps left out of the steady-state median")
    parser.add_argument("--variants", default="default", help="comma list: default, no-cache, onednn-convs, mkl-linears, checkpointing, adamw8bit, compile, buckets (ours only: the images at three aspect ratios); join with + (compile+buckets)")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "lora_trainer_bench"))
    parser.add_argument("--device", default=None)
    parser.add_argument("--repeats", type=int, default=1, help="rounds of reference + variants, for the median ratio")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    unknown = sorted({part for variant in args.variants.split(",") for part in variant.split("+")} - set(VARIANT_FLAGS))
    if unknown:
        parser.error(f"unknown variant {', '.join(unknown)}; choose from {', '.join(VARIANT_FLAGS)}")
    return args


def run_worker(command: list[str], env: dict[str, str]) -> dict:
    process = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env)
    lines = [line for line in process.stdout.strip().splitlines() if line.startswith("{")]
    if process.returncode != 0 or not lines:
        tail = "\n".join((process.stderr or process.stdout).strip().splitlines()[-15:])
        return {"error": f"worker exited with {process.returncode}", "log_tail": tail}
    return json.loads(lines[-1])


def main(argv=None) -> int:
    args = parse_args(argv)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    device_type = (args.device or ("cuda" if _cuda_available() else "cpu")).split(":")[0]
    for model in (MODELS if args.model == "all" else (args.model,)):
        resolution = args.resolution or (256 if ARCHITECTURES[model][1] else 64)
        model_dir = build_model(workdir, model)
        ours_data, reference_data = build_data(workdir, resolution)
        config = {"model": model, "resolution": resolution, "batch_size": args.batch_size, "rank": args.rank,
                  "precision": args.precision, "steps": args.steps, "device": device_type}
        ratios: dict[str, list[tuple[float, float]]] = {}
        reference_script = os.environ.get(REFERENCE_SCRIPT_VARIABLES.get(ARCHITECTURES[model][0], "-"))
        for repeat in range(args.repeats):
            tag = {"repeat": repeat + 1} if args.repeats > 1 else {}
            reference = None
            if reference_script:
                reference = run_reference(reference_script, args, model_dir, reference_data, resolution, device_type, workdir, env)
                print(json.dumps({**config, "variant": "reference", **tag, **reference}), flush=True)
            for variant in args.variants.split(","):
                ours = run_ours(variant, args, model_dir, ours_data, resolution, env)
                line = {**config, "variant": variant, **tag, **ours}
                if reference and "error" not in reference and "error" not in ours:
                    for name, key in RATIOS.items():
                        line[name] = round(ours[key] / reference[key], 3)
                    ratios.setdefault(variant, []).append(tuple(line[name] for name in RATIOS))
                print(json.dumps(line), flush=True)
        if args.repeats > 1:
            for variant, pairs in ratios.items():
                summary = {**config, "variant": variant, "summary_of_repeats": len(pairs)}
                for index, name in enumerate(RATIOS):
                    values = [pair[index] for pair in pairs]
                    summary[f"{name}_median"] = round(statistics.median(values), 3)
                    summary[f"{name}_range"] = [min(values), max(values)]
                print(json.dumps(summary), flush=True)
    return 0


def run_reference(script, args, model_dir, data, resolution, device_type, workdir, env) -> dict:
    return run_worker([
        sys.executable, "-m", "bench.reference", script, str(args.warmup), device_type,
        "--pretrained_model_name_or_path", str(model_dir), "--train_data_dir", str(data),
        "--resolution", str(resolution), "--center_crop", "--train_batch_size", str(args.batch_size),
        "--max_train_steps", str(args.steps), "--learning_rate", "1e-4", "--lr_scheduler", "constant",
        "--lr_warmup_steps", "0", "--rank", str(args.rank), "--seed", "0", "--dataloader_num_workers", "0",
        "--mixed_precision", {"fp32": "no"}.get(args.precision, args.precision),
        "--output_dir", str(workdir / "reference_output"), "--checkpointing_steps", "1000000",
        "--report_to", "tensorboard",
    ], env)


def run_ours(variant, args, model_dir, data, resolution, env) -> dict:
    command = [
        sys.executable, "-m", "bench.ours", "--model-dir", str(model_dir), "--data", str(data),
        "--steps", str(args.steps), "--warmup", str(args.warmup), "--resolution", str(resolution),
        "--batch-size", str(args.batch_size), "--rank", str(args.rank), "--precision", args.precision,
    ]
    command += [flag for part in variant.split("+") for flag in VARIANT_FLAGS[part]]
    command += ["--device", args.device] if args.device else []
    return run_worker(command, env)


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


if __name__ == "__main__":
    sys.exit(main())
