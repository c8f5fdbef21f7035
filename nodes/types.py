"""ComfyUI type names and the objects that travel on those links.

LORA and LOSS use ComfyUI's own type names, ``LORA_MODEL`` and ``LOSS_MAP``,
so our outputs plug straight into its "Load LoRA Model", "Save LoRA Weights"
and "Plot Loss Graph" nodes, and the LoRA from its own "Train LoRA" node
plugs into our SaveLoRA/ApplyLoRA. The other types are ours, prefixed so
they never meet another suite's socket by accident.
"""
from __future__ import annotations

from typing import Any

BASE = "LORA_TRAINER_BASE"
DATASET = "LORA_TRAINER_DATASET"
LORA_CONFIG = "LORA_TRAINER_CONFIG"
OPTIONS = "LORA_TRAINER_OPTIONS"
OPTIONS_SCHEMA = 1  # raised when the meaning of an options value changes (not when a setting is added)
LORA = "LORA_MODEL"  # ComfyUI's: a dict of kohya/ComfyUI LoRA key -> tensor
LOSS = "LOSS_MAP"  # ComfyUI's: {"loss": [float, ...]}


class TrainedLoRA(dict):
    """A LORA_MODEL: the kohya key -> tensor dict ComfyUI's loader maps, plus the ``ss_*`` metadata.

    A plain dict for every ComfyUI node that takes LORA_MODEL; our SaveLoRA
    also writes ``metadata`` into the file. Immutable by convention: ComfyUI
    caches node outputs and hands the same object to every consumer.
    """

    def __init__(self, tensors: dict[str, Any], metadata: dict[str, str] | None = None):
        super().__init__(tensors)
        self.metadata = dict(metadata or {})

    @property
    def modules(self) -> int:
        from ..core.lora import TEXT_ENCODER_PREFIXES, UNET_PREFIX, file_module_stems

        return len(file_module_stems(self, UNET_PREFIX)) + len(file_module_stems(self, TEXT_ENCODER_PREFIXES))

    def __repr__(self) -> str:
        meta = self.metadata
        return f"LoRA(rank {meta.get('ss_network_dim', '?')}, {self.modules} modules, {meta.get('ss_steps', '?')} steps)"


def loss_map(loss_history: list[float], lr_history: list[float] | None = None) -> dict[str, list[float]]:
    """ComfyUI's LOSS_MAP shape; "lr" rides along for consumers that want it and is ignored by Plot Loss Graph."""
    result = {"loss": [float(value) for value in loss_history]}
    if lr_history:
        result["lr"] = [float(value) for value in lr_history]
    return result


class TrainingOptionValues(dict):
    """LORA_TRAINER_OPTIONS: TrainSettings field -> value, from the Training Options node."""

    schema = OPTIONS_SCHEMA

    def __repr__(self) -> str:
        return f"TrainingOptions({len(self)} settings)"
