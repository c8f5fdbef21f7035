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


def safe_child(root: str | os.PathLike, name: str, what: str = "name", suffix: str = "") -> Path:
    """``root/name[suffix]`` for a relative name of plain parts (``sub/name`` allowed), refusing anything
    that could leave ``root``: absolute paths, ``..``, reserved or hidden parts, links pointing outside."""
    text = (name or "").strip()
    if suffix and text.lower().endswith(suffix.lower()):
        text = text[: -len(suffix)]
    if "\\" in text:
        raise OutputPathError(f"The {what} {name!r} contains a backslash; use '/' between subfolders or a plain name.")
    if text.startswith("/"):
        raise OutputPathError(f"The {what} {name!r} is an absolute path; give a name inside the folder.")
    parts = [check_file_name(part, what) for part in text.split("/")]  # an empty text or part is refused here
    root_path = Path(root).resolve()
    target = root_path.joinpath(*parts[:-1], parts[-1] + suffix).resolve()
    if root_path not in target.parents:
        raise OutputPathError(f"The {what} {name!r} would leave the folder {root_path}.")
    return target
