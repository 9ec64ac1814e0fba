"""`EntryScript()` used outside a job (a script's unit test, a notebook) must not write files where it stands."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path


def test_entry_script_outside_a_job_writes_no_log_file_in_the_working_folder(tmp_path: Path) -> None:
    code = textwrap.dedent(
        """
        import logging
        from airflow_parallel_run import EntryScript

        logging.basicConfig(level=logging.INFO)
        EntryScript().logger.info("scored 3 rows")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr
    assert "scored 3 rows" in done.stderr  # the caller's logging has the line
    assert list(tmp_path.iterdir()) == [], "EntryScript left files in the working folder"
