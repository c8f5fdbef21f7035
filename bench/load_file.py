"""Load time and peak memory of a full-size single-file checkpoint, as ComfyUI users have them.

    python -m bench.load_file --family sdxl --dtype bf16 [--file PATH] [--repeats 2]

Without ``--file`` it writes (once) a random full-size checkpoint of the family in fp16 in the original
layout (SDXL: 6.9 GB with CLIP-L, bigG and the VAE), then loads it with ``core.model_loading.load_base_model``
in a fresh process per round and prints one JSON line per round: seconds, peak RSS (VmHWM) and the RSS
after loading, next to the file's size.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

WORKER = """
import json, sys, time
start = time.perf_counter()
import torch
from core.model_loading import load_base_model
imported = time.perf_counter()
base = load_base_model(sys.argv[1], sys.argv[2], dtype=getattr(torch, sys.argv[3]))
loaded = time.perf_counter()
def status(field):
    return int(next(line for line in open("/proc/self/status") if line.startswith(field)).split()[1]) * 1024
print(json.dumps({"seconds_import": round(imported - start, 2), "seconds_load": round(loaded - imported, 2),
                  "peak_rss_bytes": status("VmHWM"), "rss_after_bytes": status("VmRSS"), "family": base.family,
                  "unet_dtype": str(base.unet.dtype)}))
"""


def write_random_checkpoint(path: Path, family: str, tokenizer_dir: Path) -> Path:
    import torch

    from core import tiny

    base = tiny.build_base_model(tokenizer_dir, seed=0, full_size=True, family=family, dtype=torch.float16)
    staging = path.with_name(path.name + ".partial")
    tiny.save_ldm_checkpoint(base, staging, dtype=torch.float16)
    staging.rename(path)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load_file", description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=["sd1", "sd2", "sdxl"], default="sdxl")
    parser.add_argument("--dtype", choices=["bfloat16", "float16", "float32", "bf16", "fp16", "fp32"], default="bf16")
    parser.add_argument("--file", default=None, help="a checkpoint to load instead of the random one")
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder (default: a full-vocabulary one written here)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "lora_trainer_bench"))
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from core import tiny

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    tokenizer_dir = Path(args.tokenizer) if args.tokenizer else tiny.write_tiny_tokenizer(workdir / "full_tokenizer", vocab_size=tiny.CLIP_VOCAB_SIZE)
    path = Path(args.file) if args.file else workdir / f"random_{args.family}_fp16.safetensors"
    if not path.exists():
        started = time.perf_counter()
        write_random_checkpoint(path, args.family, tokenizer_dir)
        print(f"wrote {path} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    dtype = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}.get(args.dtype, args.dtype)
    for round_number in range(args.repeats):
        done = subprocess.run([sys.executable, "-c", WORKER, str(path), str(tokenizer_dir), dtype], cwd=ROOT, capture_output=True, text=True, check=True)
        result = json.loads(done.stdout.strip().splitlines()[-1])
        print(json.dumps({"round": round_number, "file": path.name, "file_bytes": path.stat().st_size, "dtype": dtype, **result}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
