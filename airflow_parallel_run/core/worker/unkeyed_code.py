"""Python code an entry-script process ran that the job's cache key does not hold.

Why: the key holds the bytes of the entry script and of `source_directory` (the bundle the workers unpack),
and installed packages are the environment's. A script that imports a module from elsewhere (a helper in
Airflow's dags folder, a folder on PYTHONPATH, a package installed in editable mode from a checkout) runs
code that can change without the key knowing: after an edit there, a re-run would serve the results the old
code computed as the new code's. So an attempt of a process that imported such a module is output but not
cached (`AttemptResult.uncacheable`, a line in logs/sys/master_role.txt and a warning), and the fix is named:
put the module in `source_directory`.

What counts as keyed or installed: files under the bundle and the job's side inputs (their bytes are in the
key), under the engine's own package, and under the interpreter's prefixes and site-packages folders (the
standard library and installed packages). Modules
are looked at when the process's `sys.modules` grew since the last look (after init() and after each
run()), so an unchanged process costs one `len()` per attempt.
"""

from __future__ import annotations

import os
import site
import sys

from ..storage import path_forms, under

#: Modules the interpreter imports at start from wherever its configuration says: not the script's code.
_STARTUP = frozenset({"sitecustomize", "usercustomize", "__main__"})


def _installed() -> list[str]:
    """The engine's package and the interpreter's prefixes and site-packages folders."""
    engine = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the package
    folders = [engine, sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix]
    folders += site.getsitepackages()
    if site.ENABLE_USER_SITE and site.USER_SITE:
        folders.append(site.USER_SITE)
    return folders


class UnkeyedCode:
    """The modules of this process whose files lie outside the bundle, the engine and the environment."""

    def __init__(self, keyed: tuple[str, ...]) -> None:
        """`keyed`: the folders (or files) whose bytes the job's key holds: the bundle, the side inputs."""
        self._forms = path_forms([*keyed, *_installed()])
        self._looked_at = 0  # len(sys.modules) at the last look
        self._seen: set[str] = set()  # module names looked at
        self.files: list[str] = []  # the unkeyed modules' files, in the order they were found

    def look(self) -> str:
        """Why this process's results may not be cached ('' when nothing it imported is unkeyed)."""
        if len(sys.modules) != self._looked_at:
            for name, module in list(sys.modules.items()):
                if name in self._seen:
                    continue
                self._seen.add(name)
                path = getattr(module, "__file__", None)
                if name in _STARTUP or not isinstance(path, str) or not os.path.isabs(path):
                    continue
                if not under(path, self._forms) and not under(os.path.realpath(path), self._forms):
                    self.files.append(path)
            self._looked_at = len(sys.modules)
        if not self.files:
            return ""
        more = f" (+{len(self.files) - 1} more)" if len(self.files) > 1 else ""
        return (
            f"the entry script's process imported {self.files[0]}{more}, code outside the job's bundle that "
            "its cache key does not hold (a change to it would not run the mini-batches again): put it in "
            "source_directory (or install it as a package) so that these results can be cached"
        )
