"""`MLTableDataset`: a tabular MLTable as an input source, its column steps applied to what run() receives.

An MLTable's files are planned and read as the `TabularDataset` of its read transformation (the same slices,
partitions and fingerprints); each file's rows then go through the MLTable's `ColumnSteps` (a `Path` column,
the `extract_columns_from_partition_format` columns, generic `Column1..n` names of `no_header`, `drop_columns`
/ `keep_columns`, in the MLTable's order). The source registers under the entry-point group
`airflow_parallel_run.inputs`, so manifests and the sensor's trigger read it back by name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from airflow_parallel_run.core import ConfigError, InputError, TabularDataset
from airflow_parallel_run.core.inputs.partitions import partition_regex, partition_values, path_of
from airflow_parallel_run.core.inputs.source import (
    ConnectionResolver,
    CredentialMode,
    InputChange,
    PlanContext,
)
from airflow_parallel_run.core.inputs.tabular import slices_by_file
from airflow_parallel_run.core.minibatch import MiniBatch

from .mltable import ColumnSteps

if TYPE_CHECKING:
    import pandas as pd

    from airflow_parallel_run.core.inputs.fingerprint import Fingerprinter


@dataclass(frozen=True)
class MLTableDataset:
    """The tabular MLTable at `source`: `table` reads its files, `columns` is what its transformations ask of
    each file's rows. Skip/take windows are not applied (refused when the MLTable is loaded)."""

    source: str
    table: TabularDataset
    columns: ColumnSteps

    kind: ClassVar[str] = "tabular"
    template_fields: ClassVar[tuple[str, ...]] = ()
    NOT_IN_KEY: ClassVar[dict[str, str]] = {
        "source": "where the MLTable file is; the files it names are in each mini-batch's key with their "
        "contents, and what it asks of their rows is in `columns`",
    }

    def __post_init__(self) -> None:
        if self.columns.changes_rows():
            raise ConfigError(
                f"MLTable {self.source}: transformations",
                self.columns.changes_rows(),
                "steps that keep every row (skip and take windows of the table are not read yet: remove them, "
                "or cut the rows in run())",
            )

    # -- what the engine asks of every source -----------------------------------------------------------
    @property
    def storage_options(self) -> Mapping[str, Any]:
        return self.table.storage_options

    @property
    def paths(self) -> tuple[str, ...]:
        return self.table.paths

    @property
    def partition_format(self) -> str | None:
        return self.table.partition_format

    def locations(self) -> tuple[str, ...]:
        return self.table.locations()

    def plan(self, ctx: PlanContext) -> Iterator[MiniBatch]:
        return self.table.plan(ctx)

    def fingerprints(self, batches: Sequence[MiniBatch], memo: Fingerprinter) -> dict[str, str]:
        return self.table.fingerprints(batches, memo)

    def recorded_fingerprints(self, batches: Sequence[MiniBatch], memo: Fingerprinter) -> dict[str, str]:
        return self.table.recorded_fingerprints(batches, memo)

    def changes(
        self, batches: Sequence[MiniBatch], recorded: Mapping[str, str], memo: Fingerprinter
    ) -> list[InputChange]:
        return self.table.changes(batches, recorded, memo)

    def read(self, batch: MiniBatch, scratch_dir: str) -> tuple[pd.DataFrame, int]:
        """Each file's rows as the MLTable defines them, concatenated in the mini-batch's order."""
        import pandas as pd

        from airflow_parallel_run.core.inputs.tabular_read import read_tabular

        regex = partition_regex(self.table.partition_format)[0] if self.table.partition_format else None
        frames = []
        for url, group in slices_by_file(batch.slices):
            values = partition_values("", regex, path_of(url)) if regex is not None else {}
            frame = read_tabular(group, self.table)
            clash = [c for c in self.columns.added_columns() if c in frame.columns]
            if clash:
                raise InputError(
                    f"file {url!r} already has a column named {clash}, which the MLTable {self.source} adds "
                    "(include_path_column or extract_columns_from_partition_format): rename one of them"
                )
            frames.append(self.columns.apply(frame, url, values))
        frame = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
        return frame, len(frame)

    # -- documents and credentials ------------------------------------------------------------------------
    def to_dict(self, *, credentials: bool) -> dict[str, Any]:
        return {
            "type": type(self).__name__,
            "source": self.source,
            "table": self.table.to_dict(credentials=credentials),
            "columns": dataclasses.asdict(self.columns),
        }

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], storage_options: Mapping[str, Any] | None = None
    ) -> MLTableDataset:
        columns = dict(data.get("columns") or {})
        columns["partition_columns"] = tuple(columns.get("partition_columns", ()))
        columns["selections"] = tuple(
            (str(kind), tuple(names)) for kind, names in columns.get("selections", ())
        )
        return cls(
            str(data["source"]),
            TabularDataset.from_dict(data["table"], storage_options),
            ColumnSteps(**columns),
        )

    def with_credentials(
        self,
        storage_options: Mapping[str, Any],
        connections: ConnectionResolver | None = None,
        *,
        mode: CredentialMode = "fill",
    ) -> MLTableDataset:
        table = self.table.with_credentials(storage_options, connections, mode=mode)
        return self if table is self.table else dataclasses.replace(self, table=table)
