"""Files an entry script reads that the job's arguments or environment variables name, but that are not
side inputs.

Why: `arguments=["--model", "/models/model.pkl"]` works on one host without declaring the model a side
input, and the key then holds the string "/models/model.pkl", not the model's bytes: after the model is
retrained in place, a re-run would serve the old model's results as the new one's. So the entry-script
process watches, with an audit hook (`sys.addaudithook`, the "open" event), the reads of files under the
absolute local paths named by the job's arguments and environment variables, side inputs, the job's
inputs, its code and the process's own folders excepted. A process that read one has its results output
but not cached (`AttemptResult.uncacheable`, with a warning that names the file and the argument, and the
fix: declare it in `side_inputs`, whose bytes are keyed and checked). Files opened for writing or appending
are not reads (an `--output-dir` the script writes to is fine).

Reads by native code that bypasses Python's `open` (a C++ library opening the file itself) are not seen.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ..storage import path_forms, under


@dataclass(frozen=True)
class WatchedReads:
    """What a process watches: the paths the job names (`named_paths`), and the keyed ones (side inputs,
    inputs, code, output) whose reads are never undeclared, even under a named folder (`--data-root /data`
    holding the inputs)."""

    named: tuple[tuple[str, str], ...] = ()
    keyed: tuple[str, ...] = ()


def named_paths(
    arguments: Iterable[str], environment: Mapping[str, str], keyed: Iterable[str], wide: Iterable[str]
) -> tuple[tuple[str, str], ...]:
    """(absolute local path, how the job names it) for each existing path an argument (whole, or the value
    after '=') or an environment variable names, but for those under a `keyed` path (side inputs, inputs,
    code: their bytes are in the key; the output folder) and those that contain a `wide` folder (`/`, `/tmp`
    or a home folder holding the process's working folder or the interpreter: every read would be one)."""
    keyed_forms = path_forms(keyed)
    wide_paths = [os.path.realpath(p) for p in wide if p]
    found: dict[str, str] = {}
    arguments = list(arguments)
    candidates = []
    for i, arg in enumerate(arguments):
        flag = arguments[i - 1] if i and arguments[i - 1].startswith("-") else None
        candidates.append((arg, f"argument {flag}" if flag else f"argument {arg!r}"))
        if "=" in arg:
            name, _, value = arg.partition("=")
            candidates.append((value, f"argument {name}"))
    for name, value in environment.items():
        candidates.append((value, f"environment variable {name}"))
    for value, how in candidates:
        if not value or not os.path.isabs(value) or not os.path.exists(value):
            continue
        path = os.path.realpath(value)
        if under(path, keyed_forms) or any(under(w, path_forms([path])) for w in wide_paths):
            continue
        found.setdefault(path, how)
    return tuple(found.items())


class UndeclaredReads:
    """The audit hook of one entry-script process (see the module); `named` from `named_paths`."""

    def __init__(self, watched: WatchedReads) -> None:
        # each path as named and as resolved: an opened path is compared as a string, with no system call
        # (resolving it cost 20 us per open())
        self._named = [(path_forms([path]), how) for path, how in watched.named]
        self._keyed = path_forms(watched.keyed)
        self.read: dict[str, str] = {}  # file read -> how the job names the path it lies under

    def install(self) -> None:
        if self._named:
            sys.addaudithook(self._hook)

    def _hook(self, event: str, args: tuple[object, ...]) -> None:
        if event != "open" or len(self.read) > 100:
            return
        try:
            path, mode, flags = args[0], args[1], args[2]
            if not isinstance(path, str | bytes) or not _is_read(mode, flags):
                return
            text = os.fsdecode(path)
            full = os.path.normpath(text if os.path.isabs(text) else os.path.join(os.getcwd(), text))
            for forms, how in self._named:
                if under(full, forms) and not under(full, self._keyed):
                    self.read.setdefault(full, how)
                    return
        except Exception:  # noqa: BLE001, S110 - an audit hook must never fail the open it watches
            pass

    def note(self) -> str:
        """Why this process's results may not be cached ('' when it read no such file)."""
        if not self.read:
            return ""
        path, how = next(iter(self.read.items()))
        more = f" (+{len(self.read) - 1} more)" if len(self.read) > 1 else ""
        return (
            f"the entry script read {path}{more}, named by {how} but not a side input, so the cache key does not "
            "hold its bytes (a change to it would not run the mini-batches again): declare it in side_inputs so "
            "that these results can be cached"
        )


def _is_read(mode: object, flags: object) -> bool:
    """An open for reading only: `open()`'s mode ('r', 'rb'), or `os.open`'s flags (mode None)."""
    if isinstance(mode, str):
        return "r" in mode and not any(c in mode for c in "+wax")
    if isinstance(flags, int):
        return flags & os.O_ACCMODE == os.O_RDONLY
    return False
