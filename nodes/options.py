"""The Training Options node: every advanced training setting, from one table in core."""
from __future__ import annotations

NODES: dict = {}
