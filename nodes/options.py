"""The Training Options node: every advanced training setting, from one table in core.

Its widgets are ``core.setting_table.ADVANCED_SETTINGS`` (the CLI's flags come from the same rows),
with TrainSettings' defaults and the flags' help as tooltips. Its output plugs into Train LoRA's
optional ``options`` socket; a Train LoRA without it trains with the defaults, as before.
"""
from __future__ import annotations

from typing import Any

from ..core.errors import SettingsError

from . import types as T
from .nodes import CATEGORY

INT_LIMIT = 2**31 - 1


def widget(setting) -> tuple:
    """One ComfyUI input declaration for a row of the settings table."""
    default = setting.default if setting.default is not None else setting.unset
    unset = " (0: unset)" if setting.unset is not None else ""
    options: dict[str, Any] = {"tooltip": f"{setting.help}{unset}. CLI: {setting.flag}."}
    if setting.choices:
        return (list(setting.choices), {**options, "default": default})
    if setting.kind == "bool":
        return ("BOOLEAN", {**options, "default": bool(default)})
    if setting.kind == "lines":
        return ("STRING", {**options, "default": "\n".join(default or ()), "multiline": True})
    limits = {"min": setting.minimum if setting.minimum is not None else 0, "max": setting.maximum if setting.maximum is not None else INT_LIMIT}
    if setting.kind == "int":
        return ("INT", {**options, **limits, "default": int(default)})
    return ("FLOAT", {**options, **limits, "default": float(default), "step": setting.step or 0.01, "round": False})


class TrainingOptions:
    DESCRIPTION = (
        "Every advanced training setting (optimizer, loss, min-SNR, noise offset, text-encoder learning rates, caption "
        "dropout and shuffling, crops, bucket limits, previews, validation, checkpoints kept), each with the command line's "
        "default. Connect it to Train LoRA's options input; without it Train LoRA uses these defaults."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = (T.OPTIONS,)
    RETURN_NAMES = ("options",)
    OUTPUT_TOOLTIPS = ("The settings, for Train LoRA's options input.",)
    FUNCTION = "collect"

    @classmethod
    def INPUT_TYPES(cls):
        from ..core.setting_table import ADVANCED_SETTINGS

        return {"required": {setting.field: widget(setting) for setting in ADVANCED_SETTINGS}}

    def collect(self, **widgets):
        from ..core.setting_table import ADVANCED_SETTINGS, from_widget

        known = {setting.field: setting for setting in ADVANCED_SETTINGS}
        unknown = sorted(set(widgets) - set(known))
        if unknown:
            raise SettingsError(f"Training Options got {', '.join(unknown)}, which this version of the LoRA Trainer does not know; recreate the node.")
        values = {name: from_widget(known[name], value) for name, value in widgets.items()}
        return (T.TrainingOptionValues(values),)


def apply_options(settings, options):
    """``settings`` with the Training Options node's values; options from another version are refused by name."""
    from dataclasses import replace

    from ..core.setting_table import ADVANCED_SETTINGS

    if options is None:
        return settings
    if not isinstance(options, dict) or getattr(options, "schema", None) != T.OPTIONS_SCHEMA:
        raise SettingsError("The options input does not come from this version's Training Options node; connect a Training Options node of this LoRA Trainer.")
    known = {setting.field for setting in ADVANCED_SETTINGS}
    unknown = sorted(set(options) - known)
    if unknown:
        raise SettingsError(f"The Training Options node sets {', '.join(unknown)}, which this version of the LoRA Trainer does not know; recreate the node.")
    return replace(settings, **options)


NODES = {"TrainingOptions": (TrainingOptions, "Training Options")}
