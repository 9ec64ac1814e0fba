"""What the engine takes as an input: the `InputSource` protocol.

The planner, the reuse key, manifests, the output-overlap check and the entry-script process talk to an
input only through these members, so a new kind of input (a SQL query, an MLTable) is one class, not
a change to each of them. `FileDataset` and `TabularDataset` are the built-in sources; others register
through the entry-point group `airflow_parallel_run.inputs` (see core/inputs/__init__.py).

A source is a frozen dataclass: picklable (it travels to every worker in the job's spec), its fields in
the reuse key unless its class lists them in `NOT_IN_KEY` with a reason (credentials always are).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, runtime_checkable

from ..minibatch import FileRef, MiniBatch, TabularSlice

if TYPE_CHECKING:
    from typing import Self

    from .fingerprint import Fingerprinter


@dataclass(frozen=True)
class ConnectionInfo:
    """An Airflow connection as the engine sees it (the Airflow layer resolves it, the engine never asks
    Airflow): its URI with credentials, e.g. ``postgres://user:pw@host:5432/db``, and its extras."""

    uri: str = field(repr=False)
    extras: Mapping[str, Any] = field(default_factory=dict, repr=False)


#: conn_id -> ConnectionInfo; given by the Airflow layer (hooks.connection_info), None outside Airflow.
ConnectionResolver = Callable[[str], ConnectionInfo]
CredentialMode = Literal["fill", "merge"]


@dataclass
class PlanContext:
    """What one input needs to plan its mini-batches: its position among the job's inputs, the
    mini-batch size (files for "file" inputs, bytes for "tabular" ones), the partition keys, and the
    job-wide numbering of mini-batches (indexes are global over all inputs)."""

    input_index: int
    kind: str
    size: int
    partition_keys: tuple[str, ...] = ()
    numbers: Iterator[int] = field(default_factory=itertools.count)

    def batch(
        self,
        items: int,
        *,
        files: tuple[FileRef, ...] = (),
        slices: tuple[TabularSlice, ...] = (),
        pieces: tuple[Any, ...] = (),
        partition_key_value: Mapping[str, str] | None = None,
    ) -> MiniBatch:
        """The next mini-batch of the job."""
        return MiniBatch(
            next(self.numbers),
            self.kind,
            self.input_index,
            items,
            files=files,
            slices=slices,
            partition_key_value=dict(partition_key_value or {}),
            pieces=pieces,
        )


@runtime_checkable
class InputSource(Protocol):
    """One input of a job (files, tabular files, a SQL query, an MLTable)."""

    kind: ClassVar[str]  # what run() receives: "file" (local paths) | "tabular" (a DataFrame)
    template_fields: ClassVar[tuple[str, ...]]  # fields the operator renders ("paths"; "query" for SQL)

    @property
    def storage_options(self) -> Mapping[str, Any]:
        """Credentials and connection settings: never in a key, a manifest or a log."""
        ...

    def locations(self) -> tuple[str, ...]:
        """What it reads, as given (paths, URLs, "postgresql://host/db"): the output-overlap check, the
        job's signature in the cache, messages."""
        ...

    def plan(self, ctx: PlanContext) -> Iterator[MiniBatch]:
        """Its mini-batches, in order and lazily (a million files never become a list here)."""
        ...

    def fingerprints(self, batches: Sequence[MiniBatch], memo: Fingerprinter) -> dict[str, str]:
        """Unit (`MiniBatch.units()`) -> content fingerprint, for some of its planned mini-batches."""
        ...

    def read(self, batch: MiniBatch, scratch_dir: str) -> tuple[Any, int]:
        """In the entry-script process: what run() receives for `batch`, and how many items it holds.
        Imports heavy libraries lazily (a files job's process never loads pandas)."""
        ...

    def to_dict(self, *, credentials: bool) -> dict[str, Any]:
        """``{"type": <registry name>, ...}``; without credentials for manifests on shared storage."""
        ...

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], storage_options: Mapping[str, Any] | None = None) -> Self:
        """Inverse of `to_dict`; given `storage_options` replace whatever the document holds."""
        ...

    def with_credentials(
        self,
        storage_options: Mapping[str, Any],
        connections: ConnectionResolver | None = None,
        *,
        mode: CredentialMode = "fill",
    ) -> Self:
        """This input with the job's credentials: "fill" gives the job's options to an input that has none
        (driver, operator); "merge" puts them under the input's own (the sensor). `connections` resolves
        a source's `conn_id` (Airflow connections), when it has one."""
        ...


@dataclass(frozen=True)
class InputChange:
    """One unit of an input that is not what a manifest planned: `what` is "deleted" or "changed"."""

    url: str
    what: str


@runtime_checkable
class VerifiableSource(Protocol):
    """A source whose planned mini-batches can be checked against its data later (manifests)."""

    def recorded_fingerprints(self, batches: Sequence[MiniBatch], memo: Fingerprinter) -> dict[str, str]:
        """The fingerprints a manifest records for these mini-batches (as `changes` computes them again)."""
        ...

    def changes(
        self, batches: Sequence[MiniBatch], recorded: Mapping[str, str], memo: Fingerprinter
    ) -> list[InputChange]:
        """Units deleted since, or whose content differs from `recorded`."""
        ...


@runtime_checkable
class PathSource(Protocol):
    """A source of files under paths: what `DatasetPartitionSensor`'s completeness rules can watch."""

    @property
    def paths(self) -> tuple[str, ...]: ...

    @property
    def partition_format(self) -> str | None: ...

    @property
    def storage_options(self) -> Mapping[str, Any]: ...


#: Any input the engine takes.
Dataset = InputSource
