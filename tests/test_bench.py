import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_smoke_on_tiny_model(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "REFERENCE_SCRIPT"}
    process = subprocess.run(
        [sys.executable, "-m", "bench", "--model", "tiny", "--steps", "2", "--warmup", "0", "--workdir", str(tmp_path),
         "--variants", "default,no-cache,onednn-convs"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env=env,
    )
    assert process.returncode == 0, process.stderr
    lines = [json.loads(line) for line in process.stdout.splitlines() if line.startswith("{")]
    assert [line["variant"] for line in lines] == ["default", "no-cache", "onednn-convs"]
    for line in lines:
        assert "error" not in line, line
        assert line["seconds_per_step"] > 0 and line["peak_memory_bytes"] > 0
        assert set(line["phase_seconds_per_step"]) == {"data", "vae", "text_encoder", "forward", "backward", "optimizer"}
    assert "vae_cache" in lines[0]["phase_seconds_once"] and "vae_cache" not in lines[1]["phase_seconds_once"]
    cached, encoded_every_step = lines[0]["phase_seconds_per_step"], lines[1]["phase_seconds_per_step"]
    assert cached["vae"] == cached["text_encoder"] == 0
    assert encoded_every_step["vae"] > 0 and encoded_every_step["text_encoder"] > 0


def test_bench_refuses_an_unknown_variant(tmp_path):
    process = subprocess.run(
        [sys.executable, "-m", "bench", "--model", "tiny", "--workdir", str(tmp_path), "--variants", "default,onednn-conv"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert process.returncode == 2 and "unknown variant onednn-conv" in process.stderr
    assert not any(tmp_path.iterdir())  # refused before building anything


STAND_IN_REFERENCE = '''
import argparse, time, torch
parser = argparse.ArgumentParser()
parser.add_argument("--max_train_steps", type=int)
args, _ = parser.parse_known_args()
weight = torch.nn.Parameter(torch.zeros(4))
optimizer = torch.optim.SGD([weight], lr=0.1)
for _ in range(args.max_train_steps):
    time.sleep(0.05)
    weight.sum().backward()
    optimizer.step()
'''


def test_bench_repeats_pair_each_round_with_its_own_reference_run(tmp_path):
    """A stand-in for the diffusers script (never committed) steps an optimizer every 50 ms."""
    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN_REFERENCE)
    env = {**os.environ, "REFERENCE_SCRIPT": str(script)}
    process = subprocess.run(
        [sys.executable, "-m", "bench", "--model", "tiny", "--steps", "3", "--warmup", "1", "--workdir", str(tmp_path / "work"),
         "--repeats", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env=env,
    )
    assert process.returncode == 0, process.stderr
    lines = [json.loads(line) for line in process.stdout.splitlines() if line.startswith("{")]
    assert [(line["variant"], line.get("repeat")) for line in lines] == [
        ("reference", 1), ("default", 1), ("reference", 2), ("default", 2), ("default", None),
    ]
    reference, ours, summary = lines[0], lines[1], lines[-1]
    assert 0.04 < reference["seconds_per_step"] < 0.5
    assert ours["ratio_seconds_per_step"] == round(ours["seconds_per_step"] / reference["seconds_per_step"], 3)
    per_round = sorted(line["ratio_seconds_per_step"] for line in (lines[1], lines[3]))
    assert summary["summary_of_repeats"] == 2 and summary["ratio_seconds_per_step_range"] == per_round
    assert summary["ratio_seconds_per_step_median"] == round(sum(per_round) / 2, 3)


STAND_IN_SDXL_REFERENCE = STAND_IN_REFERENCE + '''
held_after_training = bytearray(400 * 2**20)  # like the SDXL script's LoRA export, after the last step
for page in range(0, len(held_after_training), 4096):
    held_after_training[page] = 1
from diffusers import StableDiffusionXLPipeline
StableDiffusionXLPipeline.from_pretrained("no/such/model")  # the SDXL script's end-of-run reload
raise SystemExit("the reload was not stopped")
'''


def test_bench_runs_the_sdxl_reference_for_sdxl_and_stops_it_at_its_final_reload(tmp_path):
    """REFERENCE_SCRIPT_SDXL (never committed) runs beside SDXL models; REFERENCE_SCRIPT's stand-in would fail if used."""
    (tmp_path / "sdxl_stand_in.py").write_text(STAND_IN_SDXL_REFERENCE)
    (tmp_path / "sd15_stand_in.py").write_text("raise SystemExit('the SD1.5 script ran for an SDXL model')")
    env = {**os.environ, "REFERENCE_SCRIPT": str(tmp_path / "sd15_stand_in.py"), "REFERENCE_SCRIPT_SDXL": str(tmp_path / "sdxl_stand_in.py")}
    process = subprocess.run(
        [sys.executable, "-m", "bench", "--model", "tiny-sdxl", "--steps", "3", "--warmup", "1", "--workdir", str(tmp_path / "work")],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env=env,
    )
    assert process.returncode == 0, process.stderr
    reference, ours = [json.loads(line) for line in process.stdout.splitlines() if line.startswith("{")]
    assert reference["variant"] == "reference" and "error" not in reference, reference
    assert reference["stopped_at_final_reload"] is True
    assert reference["peak_memory_bytes_whole_run"] - reference["peak_memory_bytes"] > 300 * 2**20, "the peak is read at the last step"
    assert ours["model"] == "tiny-sdxl" and ours["ratio_peak_memory"] == round(ours["peak_memory_bytes"] / reference["peak_memory_bytes"], 3)
    assert ours["ratio_seconds_to_first_step"] > 0


def test_gpu_script_runs_its_configurations_on_the_tiny_model_on_the_cpu(tmp_path):
    """bench/gpu.sh has no GPU to run on in CI: the same command lines on the tiny model keep it from rotting."""
    env = {k: v for k, v in os.environ.items() if k != "REFERENCE_SCRIPT"}
    env.update(PYTHON=sys.executable, MODEL="tiny", RESOLUTION="64", XL_MODEL="tiny-sdxl", XL_RESOLUTION="64", DEVICE="cpu", STEPS="3",
               WARMUP="0", NGPU="2", TMPDIR=str(tmp_path))
    env["TORCH_COMPILE_DISABLE"] = "1"  # the compile lines run, eagerly: Inductor takes minutes even on the tiny model
    process = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh")], cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    assert process.returncode == 0, process.stderr[-2000:]
    lines = [json.loads(line) for line in process.stdout.splitlines() if line.startswith("{")]
    scaling = [line for line in lines if line.get("figure") == "speed"]
    lines = [line for line in lines if line.get("figure") != "speed"]
    assert [line.get("processes") for line in scaling] == [1, 2, 2], "the scaling figure: one process, two, their ratio"
    assert all(line["images_per_second"] > 0 and line["global_batch_size"] == 2 for line in scaling[:2]) and scaling[2]["speed_up"] > 0
    assert [(line["precision"], line["batch_size"], line["variant"]) for line in lines] == [
        ("bf16", 1, "default"), ("bf16", 1, "checkpointing"), ("bf16", 1, "checkpointing+adamw8bit"), ("bf16", 1, "compile"),
        ("bf16", 4, "default"), ("bf16", 4, "checkpointing"), ("fp16", 1, "default"), ("fp16", 1, "checkpointing"),
        ("bf16", 1, "default"), ("bf16", 1, "checkpointing"), ("bf16", 1, "checkpointing+compile"),
    ]
    assert [line["model"] for line in lines] == ["tiny"] * 8 + ["tiny-sdxl"] * 3
    for line in lines[8:]:
        assert "error" not in line and line["images_per_second"] > 0, line
    assert all(line["rank"] == 16 and line["resolution"] == 64 for line in lines)
    for line in lines[:2] + lines[3:6]:
        assert "error" not in line, line
        assert line["images_per_second"] > 0 and line["peak_memory_bytes"] > 0
    assert "compile" in lines[3]["phase_seconds_once"] and lines[3]["compiled_graphs"] == 0, "compiled (here: eagerly) before the first step"
    assert "error" not in lines[2] or "bitsandbytes" in lines[2]["log_tail"], "8-bit AdamW runs, or says what to install"
    for line in lines[6:8]:  # fp16 is a GPU precision: refused on the CPU, in one line each, and the script goes on
        assert "fp16 training is not supported on the CPU" in line["log_tail"]


def test_step_memory_accounts_for_weights_adapters_and_optimizer_and_sees_checkpointing(tmp_path, capsys):
    import torch

    from bench import step_memory
    from core import lora as lora_lib
    from core.lora import LoRASettings
    from core.model_loading import load_base_model

    lines = {}
    for checkpointing in (False, True):
        step_memory.main(["--model", "tiny", "--workdir", str(tmp_path)] + ["--gradient-checkpointing"] * checkpointing)
        lines[checkpointing] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    unet = load_base_model(tmp_path / "tiny_diffusers", dtype=torch.bfloat16).unet
    unet_bytes = sum(p.numel() * p.element_size() for p in unet.parameters())
    lora_lib.inject(unet, lora_lib.target_pattern(LoRASettings().targets), 16, 16, 0.0, "UNet")
    adapters = [p for p in unet.parameters() if p.requires_grad]
    adapter_bytes = sum(p.numel() * 4 for p in adapters)  # trained in fp32
    for line in lines.values():
        at_peak = line["at_peak_by_category_bytes"]
        assert at_peak["parameter"] == unet_bytes + adapter_bytes, "every frozen weight and adapter is in the peak, once"
        assert at_peak["optimizer_state"] == 2 * adapter_bytes + 4 * len(adapters), "AdamW's two moments and step count"
        assert line["projected_peak_allocated_bytes"] == sum(at_peak.values())
    assert lines[True]["at_peak_by_category_bytes"].get("activation", 0) < lines[False]["at_peak_by_category_bytes"]["activation"] / 2


def test_step_memory_of_the_caching_phase_counts_the_encoders_on_the_device_and_not_the_unet(tmp_path, capsys):
    import torch

    from bench import step_memory
    from core.model_loading import load_base_model

    step_memory.main(["--model", "tiny", "--workdir", str(tmp_path), "--phase", "caching", "--images", "2"])
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    base = load_base_model(tmp_path / "tiny_diffusers", dtype=torch.bfloat16)
    encoders = sum(t.numel() * t.element_size() for model in (base.vae, *base.text_encoders) for t in [*model.parameters(), *model.buffers()])
    at_peak = line["at_peak_by_category_bytes"]
    # The VAE's decoder is never run, yet it is on the device; the UNet's training copy arrives after the caching.
    assert line["phase"] == "caching" and at_peak["parameter"] == encoders
    assert at_peak.get("activation", 0) + at_peak.get("temporary", 0) + at_peak.get("unknown", 0) > 0, "the encoders' own tensors"
    assert line["projected_peak_allocated_bytes"] == sum(at_peak.values())


def test_op_profile_splits_a_step_by_operator_family_in_each_precision(tmp_path, capsys):
    from bench import op_profile

    op_profile.main(["--model", "tiny", "--workdir", str(tmp_path)])
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines() if line.startswith("{")]
    assert [line["precision"] for line in lines] == ["fp32", "bf16"]
    for line in lines:
        families = line["profiled_self_seconds"]
        assert line["step_seconds"] > 0 and families["matmul"] > 0 and families["convolution"] > 0
        assert set(families) <= {*op_profile.FAMILIES, "other"}
    assert lines[1]["profiled_self_seconds"]["casts and copies"] > 0, "bf16 autocast casts"


def test_step_phases_are_medians_over_steady_steps_not_means_over_the_run():
    from bench.measure import StepPhases

    totals = {"forward": 0.0}
    phases = StepPhases(lambda: totals)
    for forward in (9.0, 5.0, 1.0, 2.0, 3.0):  # the first steps pay one-off costs
        totals["forward"] += forward
        totals.setdefault("vae", 0.0)
        totals["vae"] += 0.5
        phases.step_ended()
    # Steps 2..5 are 5, 1, 2, 3 s; skipping one warm-up step leaves 1, 2, 3.
    assert phases.steady_medians(1) == {"forward": 2.0, "vae": 0.5}
    assert phases.steady_medians(0, ["forward", "backward"]) == {"forward": 2.5, "backward": 0.0}
