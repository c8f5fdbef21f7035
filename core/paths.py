"""Names typed into widgets or flags become files only inside their intended folder."""
from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import OutputPathError

MAX_NAME_LENGTH = 120
_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}
_FORBIDDEN = re.compile(r'[\x00-\x1f<>:"|?*]')


def check_file_name(name: str, what: str = "name") -> str:
    """Return ``name`` stripped if it is a plain, portable file name; raise OutputPathError otherwise."""
    stripped = (name or "").strip()
    if not stripped:
        raise OutputPathError(f"The {what} is empty; type a name such as my_lora.")
    if "\x00" in stripped:
        raise OutputPathError(f"The {what} contains a NUL character; use letters, digits, '-' and '_'.")
    if "/" in stripped or "\\" in stripped:
        raise OutputPathError(f"The {what} {stripped!r} contains a path separator; give a plain name, not a path.")
    if stripped in (".", "..") or ".." in stripped:
        raise OutputPathError(f"The {what} {stripped!r} contains '..'; give a plain name.")
    if _FORBIDDEN.search(stripped):
        raise OutputPathError(f"The {what} {stripped!r} contains characters that are not allowed in file names (<>:\"|?* or control characters).")
    if stripped.split(".")[0].upper() in _WINDOWS_RESERVED:
        raise OutputPathError(f"The {what} {stripped!r} is a reserved device name on Windows; choose another name.")
    if stripped.endswith(".") or stripped.startswith("."):
        raise OutputPathError(f"The {what} {stripped!r} must not start or end with a dot.")
    if len(stripped) > MAX_NAME_LENGTH:
        raise OutputPathError(f"The {what} is {len(stripped)} characters long; keep it under {MAX_NAME_LENGTH}.")
    return stripped


def inside(root: str | os.PathLike, name: str, what: str = "name", suffix: str = "") -> Path:
    """``root/name[suffix]`` after checking the name and that the resolved path stays inside ``root``."""
    clean = check_file_name(name, what)
    if suffix and clean.lower().endswith(suffix.lower()):
        clean = clean[: -len(suffix)]
        check_file_name(clean, what)
    root_path = Path(root).resolve()
    target = (root_path / (clean + suffix)).resolve()
    if target.parent != root_path:
        raise OutputPathError(f"The {what} {name!r} would leave the folder {root_path}.")
    return target
