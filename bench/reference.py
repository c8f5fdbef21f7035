"""Worker: run the diffusers example script (path in REFERENCE_SCRIPT) and time its optimizer steps.

The script is run unmodified through runpy; a global optimizer step hook
records when each step ends, and peak memory is read when it exits.
"""
from __future__ import annotations

import json
import runpy
import sys
import time

PROCESS_START = time.perf_counter()


def main() -> None:
    script, warmup, device_type, *script_args = sys.argv[1:]
    from bench.measure import peak_memory_bytes, steady_seconds

    step_ends: list[float] = []
    from torch.optim.optimizer import register_optimizer_step_post_hook

    register_optimizer_step_post_hook(lambda optimizer, args, kwargs: step_ends.append(time.perf_counter()))
    sys.argv = [script, *script_args]
    runpy.run_path(script, run_name="__main__")
    step_seconds = [b - a for a, b in zip(step_ends, step_ends[1:])]
    per_step = steady_seconds(step_seconds, max(0, int(warmup) - 1))
    batch = int(script_args[script_args.index("--train_batch_size") + 1])
    print(json.dumps({
        "trainer": "reference",
        "seconds_per_step": per_step,
        "images_per_second": batch / per_step if per_step else None,
        "seconds_to_first_step": step_ends[0] - PROCESS_START if step_ends else None,
        "peak_memory_bytes": peak_memory_bytes(device_type),
    }))


if __name__ == "__main__":
    main()
