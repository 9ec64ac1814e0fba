"""The DAGs folder of a test Airflow environment, built one way for `dag.test()` and the e2e stack.

Airflow reads DAGs from one folder (AIRFLOW__CORE__DAGS_FOLDER), and `dag.test()` needs the DAG as a
file there. tests/airflow/conftest.py (DAG-level tests) and tests/e2e/conftest.py (the real stack)
both get a temp folder of symlinks: the repository's example DAGs with their `scripts/` and
`.airflowignore`, plus the test DAGs of tests/dags. The test DAGs exist once; what differs between
the two suites (sizes, thresholds) is a DAG `Param` the test sets when it triggers the run. A test
DAG finds its entry scripts next to its real path (`Path(__file__).resolve()`), so tests/dags/scripts
needs no link.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEST_DAGS = Path(__file__).resolve().parent / "dags"


def dag_sources() -> list[Path]:
    """What a test DAGs folder links to, in a fixed order."""
    examples = REPO / "dags"
    return [
        *sorted(examples.glob("*.py")),
        examples / "scripts",
        *sorted(examples.glob(".airflowignore")),
        *sorted(TEST_DAGS.glob("*.py")),
    ]


def build_dags_folder(target: Path) -> Path:
    """Creates `target` (if needed) and links every DAG source into it; returns `target`."""
    target.mkdir(parents=True, exist_ok=True)
    for source in dag_sources():
        link = target / source.name
        if not link.exists():
            link.symlink_to(source)
    return target
