"""Python modules imported from a side input are compiled from their source, never from a cached `.pyc`.

Why: the job's key holds a side input's bytes (its `.py` files; `__pycache__` is not part of its
fingerprint, core/inputs/side_check.py). CPython takes a `__pycache__/*.pyc` as current when the source's size
and modification time in whole seconds match those it recorded, so a module edited within the same second
as its last import, keeping its size, runs the old code: its results would be cached under the new bytes'
key. An entry-script process therefore imports the modules of its side inputs with a loader that compiles
the source it reads (and writes no `.pyc` into the user's folder); the cost is compiling those modules once
per process. The bundle needs none of this: it is unpacked into a new folder for every job.
"""

from __future__ import annotations

import os
import sys
from importlib import machinery
from typing import Any

from ..storage import path_forms, under


class SourceOnlyLoader(machinery.SourceFileLoader):
    """`SourceFileLoader` that compiles the source every time: no cached bytecode read, none written."""

    def get_code(self, fullname: str) -> Any:
        path = self.get_filename(fullname)
        return self.source_to_code(self.get_data(path), path)


def install(side_paths: tuple[str, ...]) -> None:
    """Imports from a folder under (or the folder holding) one of `side_paths` go through `SourceOnlyLoader`."""
    forms = path_forms(side_paths)
    if not forms:
        return
    parents = {os.path.dirname(form) for form, _prefix in forms}
    loaders = (
        (machinery.ExtensionFileLoader, machinery.EXTENSION_SUFFIXES),
        (SourceOnlyLoader, machinery.SOURCE_SUFFIXES),
        (machinery.SourcelessFileLoader, machinery.BYTECODE_SUFFIXES),
    )

    def hook(entry: str) -> machinery.FileFinder:
        folder = os.path.abspath(entry or os.getcwd())
        if not (under(folder, forms) or folder in parents):
            raise ImportError("not a side input's folder")  # the next hook (the default one) takes it
        return machinery.FileFinder(entry, *loaders)  # type: ignore[arg-type]

    sys.path_hooks.insert(0, hook)
    sys.path_importer_cache.clear()
