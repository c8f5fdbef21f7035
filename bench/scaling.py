"""Several processes against one: the data-parallel figures.

    python -m bench.scaling speed --model tiny --processes 2 [--device cpu] [--steps 20] [--batch-size 1]
    python -m bench.scaling allreduce --processes 2 [--models tiny,sd15,sdxl] [--rank 16]

``speed`` trains the same global batch per step once with one process and once with N processes
(``accelerate launch --multi_gpu``: torch's distributed launcher; gloo on a machine without GPUs)
through ``python -m core train``, and prints images/s of each and their ratio. On GPUs that is the
scaling figure (1 vs N GPUs); on this 2-core CPU it shows what the exchange costs, not a speed-up.

``allreduce`` measures the gradient exchange itself: the bytes of every adapter's fp32 gradient for
a model and rank (counted on the meta device, so no weights are built), and the seconds one
all-reduce of that many bytes takes between N gloo processes on this machine (median of 20).
One JSON line per figure.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.assets import ARCHITECTURES, build_data, build_model

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def train_once(command_prefix: list[str], model_dir: Path, data: Path, output: Path, args, batch_size: int, env: dict) -> dict:
    command = [*command_prefix, "-m", "core", "train", "--base", str(model_dir), "--data", str(data), "--output", str(output),
               "--steps", str(args.steps), "--resolution", str(args.resolution), "--rank", str(args.rank), "--batch-size", str(batch_size),
               "--precision", args.precision, "--lr-scheduler", "constant", "--no-flip"]
    command += ["--device", args.device] if args.device and command_prefix == [sys.executable] else []
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": "\n".join(done.stderr.strip().splitlines()[-5:])}
    summary = json.loads([line for line in done.stdout.splitlines() if line.startswith("{")][-1])
    per_step = summary["seconds_per_step"]
    return {"seconds_per_step": per_step, "images_per_second": summary["global_batch_size"] / per_step,
            "global_batch_size": summary["global_batch_size"], "wall_seconds": round(time.perf_counter() - started, 1)}


def speed(args) -> None:
    workdir = Path(args.workdir)
    model_dir = build_model(workdir, args.model)
    data, _ = build_data(workdir, args.resolution)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    one = train_once([sys.executable], model_dir, data, workdir / "scaling_one.safetensors", args, args.batch_size * args.processes, env)
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(args.processes),
                "--num_machines", "1", "--main_process_port", str(free_port())]
    many = train_once(launcher, model_dir, data, workdir / "scaling_many.safetensors", args, args.batch_size, env)
    for processes, figures in ((1, one), (args.processes, many)):
        print(json.dumps({"figure": "speed", "model": args.model, "resolution": args.resolution, "processes": processes, **figures}), flush=True)
    if "error" not in one and "error" not in many:
        print(json.dumps({"figure": "speed", "processes": args.processes, "speed_up": round(many["images_per_second"] / one["images_per_second"], 3)}))


def adapter_bytes(model: str, rank: int) -> int:
    """Bytes of every adapter's fp32 gradient for kohya targets at ``rank`` (UNet only), counted on the meta device."""
    import torch
    from diffusers import UNet2DConditionModel

    from core import lora as lora_lib
    from core import tiny

    family, full_size = ARCHITECTURES[model]
    unet_config, _, _ = tiny._configs(family, full_size, tiny.CLIP_VOCAB_SIZE)
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_config)
    lora_lib.inject(unet, lora_lib.target_pattern("kohya"), rank, rank, 0.0, "UNet")
    return sum(p.numel() * 4 for p in unet.parameters() if p.requires_grad)


def _allreduce_worker(rank: int, world: int, port: int, sizes: dict, repeats: int, queue) -> None:
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    results = {}
    for name, size in sizes.items():
        tensor = torch.ones(size // 4)
        dist.all_reduce(tensor)  # warm the connection up
        seconds = []
        for _ in range(repeats):
            dist.barrier()
            started = time.perf_counter()
            dist.all_reduce(tensor)
            seconds.append(time.perf_counter() - started)
        results[name] = statistics.median(seconds)
    if rank == 0:
        queue.put(results)
    dist.destroy_process_group()


def allreduce(args) -> None:
    import torch.multiprocessing as mp

    sizes = {model: adapter_bytes(model, args.rank) for model in args.models.split(",")}
    context = mp.get_context("spawn")
    queue = context.Queue()
    port = free_port()
    workers = [context.Process(target=_allreduce_worker, args=(r, args.processes, port, sizes, args.repeats, queue)) for r in range(args.processes)]
    for worker in workers:
        worker.start()
    seconds = queue.get(timeout=600)
    for worker in workers:
        worker.join()
    for model, size in sizes.items():
        print(json.dumps({"figure": "allreduce", "model": model, "rank": args.rank, "processes": args.processes,
                          "gradient_bytes": size, "allreduce_seconds": round(seconds[model], 5)}))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scaling", description=__doc__.splitlines()[0])
    parser.add_argument("figure", choices=["speed", "allreduce"])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--model", choices=list(ARCHITECTURES), default="tiny")
    parser.add_argument("--models", default="tiny,sd15,sdxl", help="allreduce: models whose adapter gradients are exchanged")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=1, help="per process")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--device", default=None, help="the single process's device (the N processes take their local rank's GPU, or the CPU)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "lora_trainer_bench"))
    args = parser.parse_args(argv)
    speed(args) if args.figure == "speed" else allreduce(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
