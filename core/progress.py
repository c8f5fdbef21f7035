"""The one progress interface every long job reports through.

Core code calls ``report(event)``; the CLI prints events, the node layer
forwards them to ComfyUI's progress bar and a websocket event.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional


@dataclass(frozen=True)
class ProgressEvent:
    phase: str  # "cache", "train", "save", "sample", "caption"
    step: int
    total: int
    loss: float | None = None
    smoothed_loss: float | None = None
    lr: float | None = None
    seconds_per_step: float | None = None
    eta_seconds: float | None = None
    preview: Any = None  # a PIL image, when there is one
    message: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "preview"}


ProgressCallback = Callable[[ProgressEvent], None]
StopCheck = Callable[[], bool]


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class ConsolePrinter:
    """Human progress lines on stderr, at most one per ``interval`` seconds (plus the last step)."""

    def __init__(self, stream=None, interval: float = 1.0):
        self.stream = stream or sys.stderr
        self.interval = interval
        self._last = 0.0

    def __call__(self, event: ProgressEvent) -> None:
        now = time.monotonic()
        if event.step < event.total and now - self._last < self.interval and event.phase != "save":
            return
        self._last = now
        if event.phase == "train":
            line = (
                f"step {event.step}/{event.total}  loss {event.loss:.4f} (avg {event.smoothed_loss:.4f})  "
                f"lr {event.lr:.2e}  {event.seconds_per_step:.2f} s/step  ETA {format_seconds(event.eta_seconds)}"
            )
        else:
            line = f"{event.phase} {event.step}/{event.total}"
        if event.message:
            line += f"  {event.message}"
        print(line, file=self.stream, flush=True)


def no_progress(event: ProgressEvent) -> None:
    del event


def never_stop() -> bool:
    return False


def optional(callback: Optional[ProgressCallback]) -> ProgressCallback:
    return callback or no_progress
