"""Worker: run a diffusers example script (SD1.5's or SDXL's LoRA script) and time its optimizer steps.

The script is run unmodified through runpy. A global optimizer step hook records when each
step ends and the peak memory so far; class-level timers add up the seconds its VAE, text
encoders and UNet forward take, reported as each one's median per steady step (the rest of a
step is its backward pass, optimizer and data). The SDXL script always reloads the whole
pipeline after saving the LoRA, which says nothing about training and in fp32 would not fit
beside the model still held (two full fp32 SDXLs, about 28 GB); the worker ends the script
there, after the LoRA file is written.
"""
from __future__ import annotations

import functools
import json
import runpy
import sys
import time

PROCESS_START = time.perf_counter()


class FinalReload(Exception):
    """Raised where the SDXL script would load its pipeline again after training."""


def stop_at_final_reload(steps_expected: int, step_ends: list[float]) -> None:
    from diffusers import StableDiffusionXLPipeline

    load = StableDiffusionXLPipeline.from_pretrained

    def from_pretrained(*args, **kwargs):
        if len(step_ends) >= steps_expected:
            raise FinalReload
        return load(*args, **kwargs)

    StableDiffusionXLPipeline.from_pretrained = from_pretrained


def time_calls(owner: type, method: str, totals: dict[str, float], phase: str) -> None:
    """Adds the wall seconds of every ``owner.method`` call to ``totals[phase]``."""
    original = getattr(owner, method)

    @functools.wraps(original)
    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            totals[phase] = totals.get(phase, 0.0) + time.perf_counter() - start

    setattr(owner, method, timed)


def time_phases(totals: dict[str, float]) -> None:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    time_calls(AutoencoderKL, "encode", totals, "vae")
    time_calls(CLIPTextModel, "forward", totals, "text_encoder")
    time_calls(CLIPTextModelWithProjection, "forward", totals, "text_encoder")
    time_calls(UNet2DConditionModel, "forward", totals, "forward")


def main() -> None:
    script, warmup, device_type, *script_args = sys.argv[1:]
    from bench.measure import StepPhases, peak_memory_bytes, steady_seconds

    steps = int(script_args[script_args.index("--max_train_steps") + 1])
    step_ends: list[float] = []
    peak_at_steps: list[int | None] = []
    phase_totals: dict[str, float] = {}
    step_phases = StepPhases(lambda: phase_totals)
    from torch.optim.optimizer import register_optimizer_step_post_hook

    def on_step(optimizer, args, kwargs):
        step_ends.append(time.perf_counter())
        step_phases.step_ended()
        peak_at_steps.append(peak_memory_bytes(device_type))

    register_optimizer_step_post_hook(on_step)
    stop_at_final_reload(steps, step_ends)
    time_phases(phase_totals)
    sys.argv = [script, *script_args]
    stopped_at_reload = False
    try:
        runpy.run_path(script, run_name="__main__")
    except FinalReload:
        stopped_at_reload = True
    step_seconds = [b - a for a, b in zip(step_ends, step_ends[1:])]
    steady_from = max(0, int(warmup) - 1)
    per_step = steady_seconds(step_seconds, steady_from)
    batch = int(script_args[script_args.index("--train_batch_size") + 1])
    phases = step_phases.steady_medians(steady_from)
    print(json.dumps({
        "trainer": "reference",
        "seconds_per_step": per_step,
        "images_per_second": batch / per_step if per_step else None,
        "seconds_to_first_step": step_ends[0] - PROCESS_START if step_ends else None,
        # The peak up to the last training step: the SD1.5 script does nothing heavy after it, and
        # the SDXL script's pipeline reload is left out (see the module's docstring).
        "peak_memory_bytes": peak_at_steps[-1] if peak_at_steps else peak_memory_bytes(device_type),
        "peak_memory_bytes_whole_run": peak_memory_bytes(device_type),
        "phase_seconds_per_step": phases,
        "stopped_at_final_reload": stopped_at_reload,
    }))


if __name__ == "__main__":
    main()
