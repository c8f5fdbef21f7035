"""Data-parallel training on the CPU with gloo: several processes train exactly what one process would.

Every test starts real processes: through ``torch.distributed.run`` (torchrun), through
``accelerate launch`` as two loopback "machines", or by hand with the launcher's environment
variables (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT), which lets a test kill one of them.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from core import tiny

ROOT = Path(__file__).resolve().parents[1]
LR = "1e-3"  # Adam divides each update by the gradient's size, so float noise in near-zero gradients grows with the learning rate
TRAIN = ["--steps", "4", "--resolution", "64", "--rank", "2", "--precision", "fp32", "--lr", LR, "--crop", "random",
         "--caption-dropout", "0.3", "--shuffle-tags", "--noise-offset", "0.05", "--lr-scheduler", "constant"]


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_assets):
    root = tmp_path_factory.mktemp("ddp")
    data = tiny.write_synthetic_dataset(root / "data", count=6, size=64)
    return {"root": root, "data": data, "base": ["--base", str(tiny_assets["ldm"]), "--tokenizer", str(tiny_assets["tokenizer"])]}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def environment(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    return {**env, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **extra}


def train_argv(files, output: Path, *extra) -> list[str]:
    return ["-m", "core", "train", *files["base"], "--data", str(files["data"]), "--output", str(output), *TRAIN, *extra]


def single(files, output: Path, *extra) -> dict:
    done = subprocess.run([sys.executable, *train_argv(files, output, *extra)], cwd=ROOT, env=environment(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def lora(path: Path) -> tuple[dict, dict]:
    with safe_open(str(path), framework="pt") as handle:
        return {k: handle.get_tensor(k) for k in handle.keys()}, handle.metadata()


def largest_difference(first: Path, second: Path) -> float:
    a, _ = lora(first)
    b, _ = lora(second)
    assert set(a) == set(b)
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def by_hand(files, output: Path, rank: int, port: int, world: int = 2, *extra, address: str = "127.0.0.1") -> subprocess.Popen:
    env = environment(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR=address, MASTER_PORT=str(port))
    return subprocess.Popen([sys.executable, *train_argv(files, output, *extra)], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_processes_train_the_lora_one_process_trains_with_their_global_batch(files, tmp_path):
    reference = single(files, tmp_path / "one.safetensors", "--batch-size", "2")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
               *train_argv(files, tmp_path / "two.safetensors", "--batch-size", "1")[0:]]
    done = subprocess.run(command, cwd=ROOT, env=environment(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summaries = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1, "only the main process reports"
    summary = summaries[0]
    assert (summary["world_size"], summary["global_batch_size"]) == (2, 2)
    assert done.stderr.count("step 4/4") == 1 and "global batch: 1 x 2 processes x 1 accumulation = 2" in done.stderr
    assert summary["loss_first"] == pytest.approx(reference["loss_first"], abs=1e-6)
    assert summary["loss_last"] == pytest.approx(reference["loss_last"], abs=1e-6)
    assert largest_difference(tmp_path / "one.safetensors", tmp_path / "two.safetensors") <= 1e-5
    _, metadata = lora(tmp_path / "two.safetensors")
    assert (metadata["ss_total_batch_size"], metadata["ss_batch_size_per_device"]) == ("2", "1")


def test_two_loopback_machines_through_accelerate_launch(files, tmp_path):
    reference = tmp_path / "one.safetensors"
    single(files, reference, "--batch-size", "2", "--bucket", "--grad-accum", "2")
    port = free_port()
    machines = []
    for rank in (0, 1):
        # --multi_gpu is accelerate's torch.distributed launcher; on a machine without GPUs our processes form a gloo group.
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "2",
                   "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1", "--main_process_port", str(port),
                   *train_argv(files, tmp_path / f"machine{rank}.safetensors", "--batch-size", "1", "--bucket", "--grad-accum", "2")]
        machines.append(subprocess.Popen(command, cwd=ROOT, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [machine.communicate(timeout=300) for machine in machines]
    assert [m.returncode for m in machines] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    assert (tmp_path / "machine0.safetensors").is_file() and not (tmp_path / "machine1.safetensors").exists(), "one writer"
    assert largest_difference(reference, tmp_path / "machine0.safetensors") <= 1e-5


def test_killing_one_process_ends_the_other_with_a_sentence_and_resume_works(files, tmp_path):
    port, output, folder = free_port(), tmp_path / "run.safetensors", tmp_path / "ck"
    extra = ("--batch-size", "1", "--save-every", "2", "--checkpoint-dir", str(folder), "--steps", "400", "--dist-timeout", "60")
    main, other = (by_hand(files, output, rank, port, 2, *extra) for rank in (0, 1))
    deadline = time.time() + 240
    while time.time() < deadline and not (folder / "checkpoint-000004").is_dir():
        time.sleep(0.2)
    assert (folder / "checkpoint-000004").is_dir(), "the run got going"
    other.send_signal(signal.SIGKILL)
    killed_at = time.time()
    _, error = main.communicate(timeout=120)
    ended_after = time.time() - killed_at
    print(f"the main process ended {ended_after:.1f} s after its peer was killed: {error.strip().splitlines()[-1]}")
    assert main.returncode == 2 and ended_after < 30
    assert "Another training process stopped or cannot be reached" in error and "Traceback" not in error
    assert not output.exists() and not list(folder.glob(".checkpoint-*")), "no partial file"
    saved = sorted(p.name for p in folder.iterdir() if p.name.startswith("checkpoint-"))
    resumed = single(files, output, "--batch-size", "2", "--steps", "12", "--save-every", "2", "--checkpoint-dir", str(folder), "--resume", str(folder))
    assert resumed["resumed_from_step"] == int(saved[-1].split("-")[1]) and resumed["steps"] == 12
    with pytest.raises(AssertionError, match="global batch of 2 images a micro-step"):
        single(files, tmp_path / "other.safetensors", "--batch-size", "1", "--steps", "20", "--checkpoint-dir", str(folder), "--resume", str(folder))


def run_pair(files, tmp_path, *extra, port=None, only_main=False, address="127.0.0.1"):
    port = port or free_port()
    processes = [by_hand(files, tmp_path / "out" / "lora.safetensors", rank, port, 2, *extra, address=address) for rank in ((0,) if only_main else (0, 1))]
    started = time.time()
    results = [process.communicate(timeout=120) for process in processes]
    return processes, results, time.time() - started


def test_a_global_batch_larger_than_the_dataset_is_one_sentence_on_every_process(files, tmp_path):
    processes, results, _ = run_pair(files, tmp_path, "--batch-size", "4")
    for process, (out, err) in zip(processes, results):
        assert process.returncode == 2 and "The global batch of 8 images (2 processes x batch size 4) is larger than the dataset (6 images" in err
    assert not (tmp_path / "out").exists()


def test_a_group_that_cannot_form_ends_within_the_timeout(files, tmp_path):
    with socket.socket() as taken:  # the port is in use by something else
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        processes, results, seconds = run_pair(files, tmp_path, "--dist-timeout", "8", port=taken.getsockname()[1], only_main=True)
    assert processes[0].returncode == 2 and "could not form a group" in results[0][1] and seconds < 60
    processes, results, seconds = run_pair(files, tmp_path, "--dist-timeout", "5", only_main=True)  # its peer never comes
    print(f"a peer that never came: refused after {seconds:.1f} s: {results[0][1].strip().splitlines()[-1]}")
    assert processes[0].returncode == 2 and "could not form a group" in results[0][1] and seconds < 60
    assert "Traceback" not in results[0][1] and not (tmp_path / "out").exists()
    other = by_hand(files, tmp_path / "out" / "lora.safetensors", 1, free_port(), 2, "--dist-timeout", "5", address="10.255.255.1")
    _, error = other.communicate(timeout=120)  # a wrong (unreachable) address for the main process
    assert other.returncode == 2 and "could not form a group at 10.255.255.1" in error, error[-2000:]


def test_one_named_device_cannot_serve_several_processes(files, tmp_path):
    processes, results, _ = run_pair(files, tmp_path, "--device", "cuda:0", only_main=True)
    assert processes[0].returncode == 2 and "names one device, but the launcher started several processes" in results[0][1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU default")
def test_a_single_process_is_untouched_by_the_launcher_code(files, tmp_path):
    summary = single(files, tmp_path / "solo.safetensors", "--batch-size", "2")
    assert (summary["world_size"], summary["global_batch_size"]) == (1, 2)
