"""Name -> class tables for backbone and judge families, imported lazily on first use."""

from __future__ import annotations

import difflib
import importlib

from .errors import NPEditError

#: The name this package was imported under: "npedit_core" normally; inside ComfyUI, which loads the
#: node pack from its folder, the core is a subpackage of the pack (e.g. "<pack path>.npedit_core").
_CORE = __name__.rpartition(".")[0]


def resolve(table: dict[str, str], name: str, what: str) -> type:
    """Import and return the class registered as `name` ("module:Class" strings in `table`)."""
    if name not in table:
        near = difflib.get_close_matches(name, list(table), n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise NPEditError(f"unknown {what} {name!r}{hint} (known: {', '.join(sorted(table))})")
    module, cls = table[name].split(":")
    if module.split(".")[0] == "npedit_core":  # table entries name the core by its usual top-level name
        module = _CORE + module[len("npedit_core"):]
    return getattr(importlib.import_module(module), cls)
