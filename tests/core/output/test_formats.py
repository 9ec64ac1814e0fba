"""The output-format registry: built-ins, clear errors, and a format another package offers through an entry
point, used by a whole job (driver, workers, entry-script processes) without a file of this package changed."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from airflow_parallel_run.core import ConfigError, FileDataset, ParallelRunConfig, run_job
from airflow_parallel_run.core.output import formats
from airflow_parallel_run.core.output.formats import (
    ENTRY_POINT_GROUP,
    TextFormat,
    format_names,
    get_format,
    register_format,
)

TSV_MODULE = '''
from airflow_parallel_run.core.output.formats import EncodedPart, LineFormat


class TsvFormat(LineFormat):
    """Tab-separated values with a header row."""

    name = "tsv"
    extension = "tsv"
    typed = False
    separator = "\\t"

    def encode(self, result):
        rows = [row if isinstance(row, dict) else {"result": row} for row in result]
        columns = list(dict.fromkeys(key for row in rows for key in row))
        text = "".join("\\t".join(str(row.get(c, "")) for c in columns) + "\\n" for row in rows)
        return EncodedPart(text.encode(), columns, None)

    def header(self, layout):
        return ("\\t".join(layout.columns) + "\\n").encode() if layout.columns else b""
'''


@pytest.fixture
def isolated_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Formats registered by a test stay in it."""
    monkeypatch.setattr(formats, "_FORMATS", dict(formats._FORMATS))


def test_built_in_formats() -> None:
    assert format_names()[:4] == ("text", "csv", "jsonl", "parquet")
    assert [(get_format(n).extension, get_format(n).typed) for n in format_names()[:4]] == [
        ("txt", False),
        ("csv", False),
        ("jsonl", True),
        ("parquet", True),
    ]


def test_unknown_formats_are_named(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"append_row_format='xml' is not allowed: text, csv, jsonl, parquet"
    ):
        get_format("xml")
    script = tmp_path / "s.py"
    script.write_text("def run(b):\n    return b\n")
    with pytest.raises(ConfigError, match=r"append_row_format='XML' is not allowed: text, csv"):
        ParallelRunConfig(entry_script=str(script), append_row_format="XML")
    with pytest.raises(ConfigError, match=r"append_row_format=3 is not allowed"):
        ParallelRunConfig(entry_script=str(script), append_row_format=3)  # type: ignore[arg-type]
    config = ParallelRunConfig(entry_script=str(script), append_row_format="JSONL")
    assert (config.append_row_format, config.output_file_name) == ("jsonl", "parallel_run_step.jsonl")


def test_a_taken_name_is_refused(isolated_registry: None) -> None:
    with pytest.raises(ValueError, match="registered already"):
        register_format(TextFormat())

    class Upper(TextFormat):
        name = "Text2"

    with pytest.raises(ValueError, match="lower-case name"):
        register_format(Upper())


def _offer_tsv(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A package outside this one, installed the way pip leaves it: a module and its dist-info."""
    (root / "apr_tsv_format.py").write_text(textwrap.dedent(TSV_MODULE))
    info = root / "apr_tsv_format-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: apr-tsv-format\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\ntsv = apr_tsv_format:TsvFormat\n")
    monkeypatch.syspath_prepend(str(root))
    pythonpath = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(root), pythonpath) if p))


def test_an_entry_point_format_runs_a_whole_job(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    isolated_registry: None,
    files,
    write_script,  # type: ignore[no-untyped-def]
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    _offer_tsv(site, monkeypatch)
    assert "tsv" in format_names()
    root = files(5)
    script = write_script("""
        import os
        def run(mini_batch):
            if "f001" in mini_batch[0]:
                return [{"name": os.path.basename(p), "pid": 1} for p in mini_batch]  # another column order
            return [{"pid": 1, "name": os.path.basename(p)} for p in mini_batch]
    """)
    config = ParallelRunConfig(
        entry_script=script, append_row_format="tsv", mini_batch_size=1, process_count_per_node=1
    )
    summary = run_job(config, [FileDataset.from_files(str(root))], str(tmp_path / "out"))
    assert summary["status"] == "succeeded", summary
    assert summary["append_row_file"] == str(tmp_path / "out" / "parallel_run_step.tsv")
    lines = Path(summary["append_row_file"]).read_text().splitlines()
    assert lines == ["pid\tname"] + [f"1\tf{i:03d}.txt" for i in range(5)]
