"""File and folder names typed into widgets, kept inside their target folder."""
from __future__ import annotations

import re
from pathlib import Path

from ..core.errors import OutputPathError

_WINDOWS_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)), *(f"lpt{i}" for i in range(1, 10))}
_BAD_CHARACTERS = re.compile(r'[\x00-\x1f<>:"|?*\\]')


def safe_child(root: str | Path, name: str, what: str) -> Path:
    """``root/name`` for a relative name of plain parts (subfolders allowed); refuse anything that could leave root."""
    text = (name or "").strip()
    if not text:
        raise OutputPathError(f"The {what} is empty; type a name such as my_lora.")
    if _BAD_CHARACTERS.search(text):
        raise OutputPathError(f"The {what} {text!r} contains characters that are not allowed in file names (\\ : * ? \" < > | or control characters).")
    parts = text.split("/")
    if text.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise OutputPathError(f"The {what} {text!r} must be a plain relative name without '..', empty or absolute parts.")
    for part in parts:
        if part.startswith(".") or part.split(".")[0].lower() in _WINDOWS_RESERVED or part.endswith((" ", ".")):
            raise OutputPathError(f"The {what} {text!r} has a hidden, reserved or badly ended part ({part!r}).")
    base = Path(root).resolve()
    target = (base / text).resolve()
    if target != base and base not in target.parents:
        raise OutputPathError(f"The {what} {text!r} points outside {base} (through a link); choose another name.")
    return target
