"""Name -> class tables for backbone and judge families, imported lazily on first use."""

from __future__ import annotations

import difflib
import importlib

from .errors import NPEditError


def resolve(table: dict[str, str], name: str, what: str) -> type:
    """Import and return the class registered as `name` ("module:Class" strings in `table`)."""
    if name not in table:
        near = difflib.get_close_matches(name, list(table), n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise NPEditError(f"unknown {what} {name!r}{hint} (known: {', '.join(sorted(table))})")
    module, cls = table[name].split(":")
    return getattr(importlib.import_module(module), cls)
