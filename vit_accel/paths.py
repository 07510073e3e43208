"""Telling a local path from a Hub id, the one rule for models and datasets alike."""

from __future__ import annotations

import os


def looks_local(name: str) -> bool:
    """Whether `name` can only be a local path: a Hub id is `name` or `owner/name`; anything absolute,
    relative-dotted, home-based or deeper is a path (which may not exist)."""
    return os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") > 1
