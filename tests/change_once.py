"""Entry-script text for tests of data that changes while a job runs: the first run() call, whichever
mini-batch it got, makes the change, and every run() waits until it is made. Each process reads at most one
mini-batch before the change, so with more mini-batches than processes some are read after it, and every
attempt's run() returns after it."""

from __future__ import annotations

import textwrap


def change_once(change: str) -> str:
    """A `_change()` function that runs the statements `change` once per job while the file named by the
    script's ARMED exists (renamed away by the call that wins), then waits for the script's MARK; the
    script defines ARMED and MARK and imports os and time."""
    body = textwrap.indent(textwrap.dedent(change).strip(), " " * 8)
    return f"""
def _change():
    try:
        os.rename(ARMED, ARMED + ".taken")  # one run() call wins
    except FileNotFoundError:
        pass
    else:
{body}
        open(MARK, "w").close()
    deadline = time.monotonic() + 60
    while os.path.exists(ARMED + ".taken") and not os.path.exists(MARK) and time.monotonic() < deadline:
        time.sleep(0.02)
"""
