"""What TrainLoRA does around core's Trainer: resume rule, progress forwarding, memory hand-over."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ..core import checkpoints
from ..core.errors import TrainerError
from ..core.progress import ConsolePrinter, ProgressEvent

from . import run_log
from .comfy_bridge import PROGRESS_EVENT

EVENT_INTERVAL = 0.25  # seconds between websocket events: a few per second is smooth and cheap
PREVIEW_SIZE = 512


BUCKETS = {"auto": None, "on": True, "off": False}


def node_settings(base, device, *, resolution: int, aspect_buckets: str, gradient_checkpointing: bool, checkpoint_folder: str, seed: int,
                  options=None, **widgets: Any):
    """TrainLoRA's widgets (and a Training Options node's values) as core settings: resolution 0 and buckets
    "auto" are the base family's choice, and SDXL on a card too small for it without gradient checkpointing
    gets it (the console says so)."""
    from ..core.devices import accelerator_memory
    from ..core.training import TrainSettings

    from .options import apply_options

    if aspect_buckets not in BUCKETS:
        raise TrainerError(f"Aspect buckets must be one of {', '.join(BUCKETS)}, got {aspect_buckets!r}.")
    family = base.model_family
    memory = accelerator_memory(device)
    needs = family.checkpointing_below_bytes
    if not gradient_checkpointing and needs and memory is not None and memory < needs:
        gradient_checkpointing = True
        print(f"[LoRA Trainer] {family.label} on a {memory / 2**30:.0f} GB card: gradient checkpointing turned on so a step fits.", flush=True)
    return apply_options(TrainSettings(
        steps=int(widgets["steps"]), learning_rate=float(widgets["learning_rate"]), batch_size=int(widgets["batch_size"]),
        resolution=int(resolution) or None, seed=int(seed), lr_scheduler=widgets["lr_scheduler"], warmup_steps=int(widgets["warmup_steps"]),
        precision=widgets["precision"], gradient_checkpointing=bool(gradient_checkpointing), random_flip=bool(widgets["random_flip"]),
        save_every=int(widgets["save_every"]), bucket=BUCKETS[aspect_buckets],
        output_name=(checkpoint_folder or "lora").strip().replace("/", "_"),
    ), options)


def resume_point(checkpoint_dir: Path, steps: int) -> tuple[Path | None, int]:
    """Auto-resume rule: the newest complete checkpoint in this run's folder, if there is one.

    Whether it belongs to *this* run (same LoRA settings, base, dataset and
    step meaning) is checked by core when it loads it, which refuses with a
    sentence naming the difference. Here: a checkpoint past the requested
    steps is refused, because finishing it would mean training backwards.
    """
    found = checkpoints.find_checkpoints(checkpoint_dir)
    if not found:
        return None, 0
    newest = found[-1]
    try:
        step = int(json.loads((newest / "state.json").read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        raise TrainerError(f"Checkpoint {newest} is unreadable; delete it or choose another checkpoint folder.") from None
    if step > steps:
        raise TrainerError(
            f"Checkpoint folder {checkpoint_dir.name} already holds a run at step {step}, beyond the {steps} steps asked; "
            "raise the steps or choose another checkpoint folder."
        )
    return checkpoint_dir, step


class ComfyProgress:
    """core ProgressEvent -> ComfyUI progress bar (every step), websocket event (throttled), console line, run log."""

    def __init__(self, bridge, node_id: str, total: int, resumed_from: int = 0, interval: float = EVENT_INTERVAL):
        self.bridge, self.node_id, self.total, self.interval = bridge, node_id, total, interval
        self.bar = bridge.progress_bar(total, node_id or None)
        self.cancel_requested = False
        self.console = ConsolePrinter(interval=10.0)
        self._last_sent = 0.0
        self._pending: list[float] = []
        self._last: dict[str, Any] = {}
        if resumed_from:
            self._advance_bar(resumed_from, total)
        losses, validation = run_log_prefix(self.node_id, resumed_from)
        run_log.start(self.node_id, total, losses, resumed_from, validation)
        self._send({"phase": "start", "step": resumed_from, "total": total, "resumed_from": resumed_from})

    def _advance_bar(self, value: int, total: int, preview=None) -> None:
        # ComfyUI's progress hook raises its interrupt exception when Cancel was pressed. Raised here,
        # inside core's step, it would skip the checkpoint; swallowed, core sees the same flag through
        # should_stop before the next step, saves a resumable checkpoint and returns.
        # ComfyUI clears its interrupt flag as it raises, so the cancel is remembered here.
        try:
            self.bar.update_absolute(value, total, preview)
        except self.bridge.interrupt_exception():
            self.cancel_requested = True

    def should_stop(self) -> bool:
        """core's stop check: Cancel seen by the progress bar, or ComfyUI's interrupt flag."""
        return self.cancel_requested or self.bridge.interrupted()

    def _send(self, data: dict[str, Any]) -> None:
        self.bridge.send_event(PROGRESS_EVENT, {"node": self.node_id, **data})

    def __call__(self, event: ProgressEvent) -> None:
        self.console(event)
        if event.phase == "train":
            preview = ("JPEG", event.preview, PREVIEW_SIZE) if event.preview is not None else None
            self._advance_bar(event.step, event.total, preview)
            info = event.as_dict()
            run_log.record(self.node_id, event.step, event.loss, {k: info[k] for k in ("total", "smoothed_loss", "lr", "seconds_per_step", "eta_seconds")})
            self._pending.append(float(event.loss))
            now = time.monotonic()
            if event.step >= event.total or now - self._last_sent >= self.interval:
                self._last_sent = now
                # Every raw loss since the previous event rides along, so throttling drops no point of the curve.
                self._send({**info, "losses": self._pending, "first_step": event.step - len(self._pending) + 1})
                self._pending = []
        elif event.phase == "validation":
            run_log.record_validation(self.node_id, event.step, event.loss)
            self._send({"phase": "validation", "step": event.step, "total": event.total, "validation_loss": event.loss, "message": event.message})
        elif event.phase in ("cache", "save"):
            now = time.monotonic()
            if event.phase == "save" or event.step >= event.total or now - self._last_sent >= self.interval:
                self._last_sent = now
                self._send({"phase": event.phase, "step": event.step, "total": event.total, "message": event.message})

    def finish(self, status: str, step: int) -> None:
        if self._pending:
            self._send({"phase": "train", "step": step, "total": self.total, "losses": self._pending, "first_step": step - len(self._pending) + 1})
            self._pending = []
        run_log.finish(self.node_id, status)
        self._send({"phase": status, "step": step, "total": self.total})


def run_log_prefix(node_id: str, resumed_from: int) -> tuple[list[float], list]:
    """On resume, keep the curves drawn so far (up to the checkpoint's step) so the chart continues them."""
    if not resumed_from:
        return [], []
    previous = run_log.get(node_id)
    if previous is None or previous["points"] < resumed_from:
        return [], []
    return previous["loss"][:resumed_from], [point for point in previous.get("validation", []) if point[0] <= resumed_from]
