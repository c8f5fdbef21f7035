"""Nodes that show what will be trained and what was: the dataset preview and the comparison grid."""
from __future__ import annotations

NODES: dict = {}
