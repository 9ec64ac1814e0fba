"""`SqlDataset`: the rows of a PostgreSQL table or query; `run()` gets a pandas DataFrame per mini-batch.

Azure's `TabularDataset.from_sql_query`, made safe to cache and to run on many workers:

- **An ordered key.** Mini-batches are keyset pages, half-open ranges of a unique, never-NULL key:
  the primary key of a table (or its first unique index over NOT NULL columns) from the catalog, or
  `key_column=` (required for a SELECT, whose result the catalog cannot describe). Planning checks
  that the key really is unique and never NULL over the rows it pages: a NULL key would fall in no
  page, a repeated one could fall in two.
- **Pages with stable boundaries.** One planning statement, run in the database, marks a row as a page
  start when the low bits of `md5(key::text)` are zero (about one row in the target page size, rounded
  to a power of two), caps a page at `PAGE_CAP` times the target, and returns per page its first key,
  its row count and a digest of its rows. Because the boundaries depend on the keys, not on row counts,
  an updated row changes only its own page's digest, and an inserted or deleted row only its page
  (two when it is itself a page start). No row travels to the driver.
- **Fingerprints** are those digests: a page's cache key holds its range and its digest.
- **Reading** happens on the worker, in one REPEATABLE READ transaction: the page's digest is computed
  again, then its rows are read. Rows that differ from what was planned fail the attempt with
  `DataChangedError` (no retry: every try would read the same changed rows), so no output is ever made
  from other data than the key says.
- **Credentials** live only in `url` (`repr=False`, out of keys, dropped from manifests); `conn_id` names
  an Airflow connection, which the Airflow layer resolves into `url` (core never asks Airflow).

Every statement runs with the same session settings (`SESSION_SETTINGS`: UTC, ISO dates, exact floats),
so the text of a row, and therefore its digest, is the same on the driver and on every worker whatever
their environment (a `PGTZ` on a worker would otherwise change every timestamptz row's text).

SQLAlchemy and psycopg2 are the `sql` extra (`pip install airflow-parallel-run[sql]`); they are imported
when a plan or a read needs them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from ..errors import ConfigError, DataChangedError, InputError
from ..minibatch import MiniBatch, register_piece
from .source import ConnectionInfo, ConnectionResolver, CredentialMode, PlanContext

if TYPE_CHECKING:
    import pandas as pd
    from sqlalchemy.engine import Connection, Engine

    from .fingerprint import Fingerprinter

#: A page holds at most this many times the target rows (a run of keys without a page start is cut).
PAGE_CAP = 4
#: The driver every URL is given (`postgres://` and `postgresql://` mean PostgreSQL through psycopg2).
DRIVER_SCHEME = "postgresql+psycopg2"
_POSTGRES_SCHEMES = ("postgres", "postgresql", DRIVER_SCHEME)
#: Settings that fix the text of values (row digests, key bounds), whatever a client's environment says.
SESSION_SETTINGS: Mapping[str, str] = {
    "TimeZone": "UTC",
    "DateStyle": "ISO, YMD",
    "IntervalStyle": "postgres",
    "extra_float_digits": "1",
    "bytea_output": "hex",
    "lc_monetary": "C",
}
#: Connection extras that are libpq connection parameters (an Airflow connection's other extras are not).
LIBPQ_EXTRAS = frozenset(
    {
        "sslmode",
        "sslcert",
        "sslkey",
        "sslrootcert",
        "sslcrl",
        "sslpassword",
        "connect_timeout",
        "application_name",
        "options",
        "target_session_attrs",
        "keepalives",
        "keepalives_idle",
        "keepalives_interval",
        "keepalives_count",
        "gssencmode",
        "krbsrvname",
        "service",
        "passfile",
    }
)
_IDENT = r'(?:[A-Za-z_][A-Za-z0-9_$]*|"(?:[^"]|"")+")'
_TABLE_NAME = re.compile(rf"^\s*(?:{_IDENT}\s*\.\s*)?{_IDENT}\s*$")
_TIMEOUT_MESSAGE = "canceling statement due to statement timeout"


def quote_ident(name: str) -> str:
    """`name` as a PostgreSQL identifier, exactly as spelled (case kept)."""
    return '"' + name.replace('"', '""') + '"'


def masked(url: str) -> str:
    """`url` with its password replaced by `***` (for messages)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def driver_url(url: str, field_name: str = "url", extras: Mapping[str, Any] | None = None) -> str:
    """A PostgreSQL URL as SQLAlchemy opens it with psycopg2 (`postgres://` → `postgresql+psycopg2://`);
    `extras` that are libpq parameters (sslmode, ...) join its query string."""
    parts = urlsplit(url.strip())
    if parts.scheme.lower() not in _POSTGRES_SCHEMES or not parts.hostname:
        shown = masked(url) if field_name == "url" else url
        raise ConfigError(
            field_name,
            shown,
            "a PostgreSQL database: postgresql://user:password@host:port/database (or an Airflow "
            "connection of type postgres)",
        )
    query = dict(parse_qsl(parts.query))
    query.update({k: str(v) for k, v in (extras or {}).items() if k in LIBPQ_EXTRAS})
    return urlunsplit((DRIVER_SCHEME, parts.netloc, parts.path, urlencode(query), ""))


def database_of(url: str) -> str:
    """Where the rows are, without user or password: ``postgresql://host:port/database``."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"postgresql://{parts.hostname}{port}/{unquote(parts.path.lstrip('/'))}"


def _range_text(columns: Sequence[str], lower: Sequence[str] | None, upper: Sequence[str] | None) -> str:
    """`id >= 1000, id < 2040` (a composite key as a row: `(a, b) >= (x, 5)`)."""
    name = columns[0] if len(columns) == 1 else f"({', '.join(columns)})"

    def value(values: Sequence[str]) -> str:
        return values[0] if len(values) == 1 else f"({', '.join(values)})"

    bounds = []
    if lower is not None:
        bounds.append(f"{name} >= {value(lower)}")
    if upper is not None:
        bounds.append(f"{name} < {value(upper)}")
    return ", ".join(bounds) or "all rows"


@register_piece
@dataclass(frozen=True)
class KeyRange:
    """One page of a SQL input: the rows whose key is in [lower, upper) (None: unbounded), as planned.

    `lower`/`upper` are the key's values as PostgreSQL writes them (`key::text`, one per key column),
    compared back in the database, so any ordered type works. `digest` (md5 over the md5 of each row's
    text, in key order) is the page's content fingerprint: it enters the cache key as the unit's
    fingerprint, not as a field, and the worker checks it again before it hands the rows to run()."""

    database: str  # postgresql://host:port/db, never credentials
    relation: str  # the table as given, or "query <sha256 prefix>"
    columns: tuple[str, ...]
    lower: tuple[str, ...] | None
    upper: tuple[str, ...] | None
    rows: int
    digest: str
    # the names and types of the rows' columns (a digest): row text does not name them, so a renamed column
    # would otherwise leave every digest, and so every key, as it was
    shape: str = ""

    NOT_IN_KEY: ClassVar[dict[str, str]] = {
        "digest": "the page's content fingerprint: it enters the key as the unit's fingerprint",
    }

    def __post_init__(self) -> None:  # JSON (manifests) gives lists back
        for name in ("columns", "lower", "upper"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))

    @property
    def unit(self) -> str:
        return f"{self.database}/{self.relation} ({self.range_text()})"

    def range_text(self) -> str:
        return _range_text(self.columns, self.lower, self.upper)

    def describe(self) -> dict[str, Any]:
        return {
            "database": self.database,
            "relation": self.relation,
            "key": list(self.columns),
            "lower": None if self.lower is None else list(self.lower),
            "upper": None if self.upper is None else list(self.upper),
            "rows": self.rows,
        }

    def label(self) -> str:
        return f"{self.relation} ({self.range_text()})"


@dataclass(frozen=True)
class SqlDataset:
    """Rows of a PostgreSQL table or query; `run()` gets a pandas DataFrame per mini-batch (a keyset
    page of about `rows_per_mini_batch` rows, or of `mini_batch_size` bytes). See the module docstring."""

    query: str
    key_column: tuple[str, ...] | None = None
    conn_id: str | None = None
    rows_per_mini_batch: int | None = None
    query_timeout: float = 30.0
    url: str | None = field(default=None, repr=False)  # credentials: never keyed, logged or in a manifest

    kind: ClassVar[str] = "tabular"
    template_fields: ClassVar[tuple[str, ...]] = ("query",)
    NOT_IN_KEY: ClassVar[dict[str, str]] = {
        "url": "credentials and the server's address: each page's key holds the database (host, port, "
        "name), never a user or password",
        "conn_id": "names the connection the URL comes from; each page's key holds the database it reaches",
        "key_column": "each page's key holds the key columns it was cut by (given or found in the catalog)",
        "rows_per_mini_batch": "decides where pages start; each page's key holds its own key range",
        "query_timeout": "how long a statement may take, not what it returns",
    }

    def __post_init__(self) -> None:
        if not isinstance(self.query, str) or not self.query.strip().rstrip(";").strip():
            raise ConfigError("query", self.query, "a table name ([schema.]table) or a SELECT statement")
        if self.key_column is not None and (
            not isinstance(self.key_column, tuple)
            or not self.key_column
            or not all(isinstance(c, str) and c for c in self.key_column)
            or len(set(self.key_column)) != len(self.key_column)
        ):
            raise ConfigError(
                "key_column", self.key_column, "a column name, or a list of distinct column names"
            )
        rows = self.rows_per_mini_batch
        if rows is not None and (isinstance(rows, bool) or not isinstance(rows, int) or rows < 1):
            raise ConfigError("rows_per_mini_batch", rows, "an integer >= 1, or None (mini_batch_size bytes)")
        timeout = self.query_timeout
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < math.inf:
            raise ConfigError("query_timeout", timeout, "a number of seconds > 0")
        if self.conn_id is not None and (not isinstance(self.conn_id, str) or not self.conn_id.strip()):
            raise ConfigError("conn_id", self.conn_id, "an Airflow connection id")
        if self.url is not None:
            if not isinstance(self.url, str):
                raise ConfigError("url", type(self.url).__name__, "a PostgreSQL URL string")
            driver_url(self.url)

    @classmethod
    def create(
        cls,
        query: str,
        *,
        conn_id: str | None = None,
        url: str | None = None,
        key_column: str | Sequence[str] | None = None,
        rows_per_mini_batch: int | None = None,
        query_timeout: float = 30.0,
    ) -> SqlDataset:
        """`TabularDataset.from_sql_query`'s arguments, checked and normalised."""
        if conn_id is not None and url is not None:
            raise ConfigError("url", masked(str(url)), "either url= or conn_id=, not both")
        if conn_id is None and url is None:
            raise ConfigError(
                "conn_id",
                None,
                "an Airflow connection id (conn_id=), or a database URL (url=) outside Airflow",
            )
        columns: Any = (key_column,) if isinstance(key_column, str) else key_column
        if isinstance(columns, (list, tuple)):
            columns = tuple(columns)
        return cls(  # anything else is refused, naming its field, by __post_init__
            query.strip().rstrip(";").strip() if isinstance(query, str) else query,
            columns,
            conn_id,
            rows_per_mini_batch,
            query_timeout,
            driver_url(url) if isinstance(url, str) else url,
        )

    # -- where and who ------------------------------------------------------------------------------
    @property
    def storage_options(self) -> Mapping[str, Any]:
        """The credentials: the URL and its password (what the resource monitor masks). Empty until a
        `conn_id` is resolved."""
        if not self.url:
            return {}
        password = urlsplit(self.url).password
        secrets = {"database_url": self.url}
        if password:
            secrets["password"] = unquote(password)
        return secrets

    @property
    def relation(self) -> str:
        """The table as given, or `query <sha256 prefix>` for a SELECT (names pages in keys and logs)."""
        if self.is_table:
            return self.query
        return f"query {hashlib.sha256(self.query.encode()).hexdigest()[:12]}"

    @property
    def is_table(self) -> bool:
        return bool(_TABLE_NAME.match(self.query))

    @property
    def database(self) -> str:
        return database_of(self.url) if self.url else f"airflow-connection://{self.conn_id}"

    def locations(self) -> tuple[str, ...]:
        return (f"{self.database}/{self.relation}",)

    def _url(self) -> str:
        if self.url:
            return self.url
        if self.conn_id is None:  # read back from a manifest, which keeps no credentials
            raise ConfigError(
                "url",
                None,
                "a database URL: manifests keep no credentials, so a SQL input read from one needs its url= "
                "again (or a conn_id, which Airflow resolves)",
            )
        raise ConfigError(
            "conn_id",
            self.conn_id,
            "an Airflow connection, which only a job run by Airflow (ParallelRunOperator) resolves; "
            "elsewhere give url=",
        )

    def _source(self) -> str:
        """The rows as a subquery body: `SELECT * FROM <table>`, or the query itself on lines of its own (a
        trailing `--` comment must not swallow the parenthesis that closes the subquery)."""
        return f"SELECT * FROM {self.query}" if self.is_table else f"\n{self.query}\n"

    # -- planning -----------------------------------------------------------------------------------
    def plan(self, ctx: PlanContext) -> Iterator[MiniBatch]:
        if ctx.partition_keys:
            raise ConfigError(
                "partition_keys",
                list(ctx.partition_keys),
                "none for a SQL input (its rows are not in folders)",
            )
        url = self._url()
        engine = _engine(url, pooled=False)
        try:
            with engine.connect() as conn, conn.begin():
                _settle(conn, self.query_timeout)
                available, shape = self._shape(conn)
                columns = self._key(conn, available)
                statement = _planning_sql(_escape(self._source()), columns)
                params = {"rows": self.rows_per_mini_batch, "bytes": ctx.size, "cap": PAGE_CAP}
                pages = _run(conn, statement, params, self._doing("planning"), self.query_timeout).all()
        finally:
            engine.dispose()
        self._check_keys(columns, pages)
        database = database_of(url)
        firsts = [tuple(page.first) for page in pages]
        for i, page in enumerate(pages):
            piece = KeyRange(
                database,
                self.relation,
                columns,
                firsts[i] if i else None,
                firsts[i + 1] if i + 1 < len(pages) else None,
                int(page.rows),
                str(page.digest),
                shape,
            )
            yield ctx.batch(piece.rows, pieces=(piece,))

    def _doing(self, what: str) -> str:
        return f"{what} SQL input {self.relation} of {self.database}"

    def _shape(self, conn: Connection) -> tuple[list[str], str]:
        """The rows' column names, and a digest of their names and types."""
        result = _run(
            conn,
            f"SELECT * FROM ({_escape(self._source())}) AS _apr_row LIMIT 0",
            {},
            self._doing("planning"),
            self.query_timeout,
        )
        described = [(str(d[0]), int(d[1])) for d in result.cursor.description]  # name, type oid
        result.close()
        shape = hashlib.sha256(json.dumps(described).encode()).hexdigest()[:16]
        return [name for name, _ in described], shape

    def _key(self, conn: Connection, available: Sequence[str]) -> tuple[str, ...]:
        """The key columns: `key_column`, else the table's primary key or first unique index over NOT NULL
        columns; each must be a column of the query's result."""
        if self.key_column is not None:
            for column in self.key_column:
                if column not in available:
                    raise ConfigError(
                        "key_column",
                        column,
                        f"a column of the rows of {self.relation} (they have: {', '.join(available)})",
                    )
            return self.key_column
        if not self.is_table:
            raise ConfigError(
                "key_column",
                None,
                "the column (or columns) of the query's rows that is unique and never NULL: a SELECT needs "
                "key_column=, the catalog cannot say what is unique in its result",
            )
        found = _catalog_key(conn, self.query)
        if found is None:
            raise ConfigError(
                "key_column",
                None,
                f"a unique, never-null column (or columns) of {self.query}; it has no primary key",
            )
        return found

    def _check_keys(self, columns: tuple[str, ...], pages: Sequence[Any]) -> None:
        """A NULL or repeated key would put a row in no page, or in two: refused before any work."""
        for position, column in enumerate(columns):
            nulls = sum(int(page.nulls[position]) for page in pages)
            if nulls:
                raise InputError(
                    f"key column {column!r} of {self.relation} is NULL in {nulls} row(s); a key column must "
                    "never be NULL (choose another key_column, or filter those rows out in the query)"
                )
        repeated = [page.repeated for page in pages if page.repeated is not None]
        if repeated:
            name = columns[0] if len(columns) == 1 else f"({', '.join(columns)})"
            raise InputError(
                f"key {name} = {min(repeated)} appears in more than one row of {self.relation}; the key must "
                "be unique (choose another key_column, or add columns to it)"
            )

    # -- fingerprints -------------------------------------------------------------------------------
    def fingerprints(self, batches: Sequence[MiniBatch], memo: Fingerprinter) -> dict[str, str]:
        """The digests planning computed in the database (no row is read again here)."""
        return {piece.unit: piece.digest for mb in batches for piece in mb.pieces}

    def recorded_fingerprints(self, batches: Sequence[MiniBatch], memo: Fingerprinter) -> dict[str, str]:
        return self.fingerprints(batches, memo)

    def changes(
        self, batches: Sequence[MiniBatch], recorded: Mapping[str, str], memo: Fingerprinter
    ) -> list[Any]:
        """Pages whose rows differ now from `recorded` (deleted pages cannot be: a range always exists)."""
        from .source import InputChange

        engine = _engine(self._url(), pooled=False)
        changed: list[InputChange] = []
        try:
            with engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn, conn.begin():
                _settle(conn, self.query_timeout)
                for mb in batches:
                    for piece in mb.pieces:
                        _, digest = self._page_digest(conn, piece, "checking")
                        if self._shape(conn)[1] != piece.shape:
                            digest = None  # a column renamed or retyped: every page changed
                        if piece.unit in recorded and recorded[piece.unit] != digest:
                            changed.append(InputChange(piece.unit, "changed"))
        finally:
            engine.dispose()
        return changed

    # -- reading ------------------------------------------------------------------------------------
    def read(self, batch: MiniBatch, scratch_dir: str) -> tuple[pd.DataFrame, int]:
        """The page's rows in key order, after checking in the same snapshot that they are the rows
        planned (`DataChangedError` when not)."""
        import pandas as pd

        (piece,) = batch.pieces
        engine = _engine(self._url(), pooled=True)
        with engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn, conn.begin():
            _settle(conn, self.query_timeout)
            rows, digest = self._page_digest(conn, piece, f"reading mini-batch {batch.index} of")
            if digest != piece.digest or self._shape(conn)[1] != piece.shape:
                raise DataChangedError(
                    f"the rows of mini-batch {batch.index} ({piece.range_text()}) changed after the job was "
                    "planned; run the job again"
                )
            where, params = _range_condition(piece)
            order = ", ".join(f"_apr_row.{quote_ident(c)}" for c in piece.columns)
            statement = (
                f"SELECT * FROM ({_escape(self._source())}) AS _apr_row WHERE {where} ORDER BY {order}"
            )
            try:
                frame = pd.read_sql_query(statement, conn, params=params)
            except Exception as exc:  # noqa: BLE001 - pandas wraps the driver's error in its own
                _raise_timeout(
                    exc, f"reading mini-batch {batch.index} ({piece.range_text()})", self.query_timeout
                )
                raise
        return frame, len(frame)

    def _page_digest(self, conn: Connection, piece: KeyRange, doing: str) -> tuple[int, str | None]:
        where, params = _range_condition(piece)
        order = ", ".join(f"_apr_row.{quote_ident(c)}" for c in piece.columns)
        statement = (
            f"SELECT count(*), md5(string_agg(md5(_apr_row::text), '' ORDER BY {order})) "
            f"FROM ({_escape(self._source())}) AS _apr_row WHERE {where}"
        )
        row = _run(conn, statement, params, f"{doing} {piece.label()}", self.query_timeout).one()
        return int(row[0]), row[1]

    # -- serialised form and credentials -------------------------------------------------------------
    def to_dict(self, *, credentials: bool) -> dict[str, Any]:
        document: dict[str, Any] = {
            "type": type(self).__name__,
            "query": self.query,
            "key_column": None if self.key_column is None else list(self.key_column),
            "conn_id": self.conn_id,
            "rows_per_mini_batch": self.rows_per_mini_batch,
            "query_timeout": self.query_timeout,
        }
        if credentials and self.url is not None:
            document["url"] = self.url
        return document

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], storage_options: Mapping[str, Any] | None = None
    ) -> SqlDataset:
        """Inverse of `to_dict`; given `storage_options` (this source's own, see `storage_options`) bring
        the URL back."""
        url = data.get("url")
        if storage_options is not None:
            url = storage_options.get("database_url", url)
        key = data.get("key_column")
        return cls(
            data["query"],
            None if key is None else tuple(key),
            data.get("conn_id"),
            data.get("rows_per_mini_batch"),
            float(data.get("query_timeout", 30.0)),
            url,
        )

    def with_credentials(
        self,
        storage_options: Mapping[str, Any],
        connections: ConnectionResolver | None = None,
        *,
        mode: CredentialMode = "fill",
    ) -> SqlDataset:
        """Its connection's URL, when it names one and a resolver is given (the Airflow layer's). A job's
        file-system `storage_options` say nothing about a database and are not used."""
        if self.url is not None or self.conn_id is None or connections is None:
            return self
        return dataclasses.replace(self, url=connection_url(self.conn_id, connections(self.conn_id)))


def connection_url(conn_id: str, info: ConnectionInfo) -> str:
    """The SQLAlchemy URL of an Airflow connection: its URI without Airflow's extras in the query string
    (`postgres://` → `postgresql+psycopg2://`), plus the extras that are libpq parameters."""
    parts = urlsplit(info.uri)
    if parts.scheme.lower() not in _POSTGRES_SCHEMES:
        raise ConfigError(
            "conn_id", conn_id, f"a connection of type postgres (this one is of type {parts.scheme!r})"
        )
    return driver_url(urlunsplit(parts._replace(query="", fragment="")), "conn_id", info.extras)


# -- statements ------------------------------------------------------------------------------------------
def _escape(sql: str) -> str:
    """User SQL inside a statement run with psycopg2 parameters: `%` must be doubled."""
    return sql.replace("%", "%%")


def _planning_sql(source: str, columns: Sequence[str]) -> str:
    """One pass over the rows, ordered by the key: page starts, pages capped at `cap` times the target,
    and per page its first key (as text), rows, digest, NULL counts per key column and one repeated key.

    The target is `rows` (rows_per_mini_batch) or `bytes` ÷ the rows' average width; a row starts a
    page when the low `round(log2(target))` bits of md5(key text) are zero."""
    keys = [f"k{i}" for i in range(len(columns))]
    select_keys = ", ".join(f"_apr_row.{quote_ident(c)} AS {k}" for c, k in zip(columns, keys, strict=True))
    order = ", ".join(keys)
    key_text = f"{keys[0]}::text" if len(keys) == 1 else f"ROW({order})::text"
    any_null = " OR ".join(f"{k} IS NULL" for k in keys)
    same_as_previous = " AND ".join(f"lag({k}) OVER w = {k}" for k in keys)
    firsts = ", ".join(f"max({k}::text) FILTER (WHERE first_of_part)" for k in keys)
    nulls = ", ".join(f"count(*) FILTER (WHERE {k} IS NULL)" for k in keys)
    return f"""
WITH src AS MATERIALIZED (
    SELECT {select_keys}, md5(_apr_row::text) AS h, pg_column_size(_apr_row.*) AS w FROM ({source}) AS _apr_row
),
target AS (
    SELECT greatest(1, coalesce(%(rows)s::bigint,
                                round(%(bytes)s::numeric / greatest(avg(w), 1))::bigint)) AS t
    FROM src
),
bits AS (
    SELECT t, (2 ^ least(30, round(log(2, t::numeric))))::int - 1 AS mask, %(cap)s::bigint * t AS cap
    FROM target
),
marked AS (
    SELECT {order}, h,
           (row_number() OVER w = 1
            OR (('x' || right(md5({key_text}), 8))::bit(32)::int & bits.mask) = 0) AS starts,
           coalesce({same_as_previous}, false) AS repeated,
           ({any_null}) AS null_key,
           {key_text} AS key_text
    FROM src, bits
    WINDOW w AS (ORDER BY {order})
),
paged AS (
    SELECT *, sum(starts::int) OVER (ORDER BY {order} ROWS UNBOUNDED PRECEDING) AS page FROM marked
),
parted AS (
    SELECT paged.*, (row_number() OVER (PARTITION BY page ORDER BY {order}) - 1) / bits.cap AS part,
           mod(row_number() OVER (PARTITION BY page ORDER BY {order}) - 1, bits.cap) = 0 AS first_of_part
    FROM paged, bits
)
SELECT ARRAY[{firsts}] AS first, count(*) AS rows,
       md5(string_agg(h, '' ORDER BY {order})) AS digest,
       ARRAY[{nulls}] AS nulls,
       min(key_text) FILTER (WHERE repeated) AS repeated
FROM parted
GROUP BY page, part
ORDER BY page, part
"""


def _range_condition(piece: KeyRange) -> tuple[str, dict[str, Any]]:
    """`q.k >= %(lo0)s AND q.k < %(hi0)s` (row comparisons for a composite key) and its parameters; the
    bounds are text literals PostgreSQL reads as the key columns' types."""
    names = [f"_apr_row.{quote_ident(c)}" for c in piece.columns]
    left = names[0] if len(names) == 1 else f"({', '.join(names)})"
    conditions: list[str] = []
    params: dict[str, Any] = {"_apr": 0}  # never empty: psycopg2 then reads %% as %
    for op, prefix, values in ((">=", "lo", piece.lower), ("<", "hi", piece.upper)):
        if values is None:
            continue
        slots = [f"%({prefix}{i})s" for i in range(len(values))]
        right = slots[0] if len(slots) == 1 else f"({', '.join(slots)})"
        conditions.append(f"{left} {op} {right}")
        params.update({f"{prefix}{i}": value for i, value in enumerate(values)})
    return " AND ".join(conditions) or "true", params


def _catalog_key(conn: Connection, table: str) -> tuple[str, ...] | None:
    """The table's primary key, else its first unique index (by name) over NOT NULL columns only (no
    expressions, not partial); None when it has neither. `ConfigError` when there is no such table."""
    oid = _run(conn, "SELECT to_regclass(%(t)s)::oid", {"t": table}, f"looking up {table}", None).scalar()
    if oid is None:
        raise ConfigError("query", table, "an existing table or view, or a SELECT statement")
    rows = _run(
        conn,
        """
        SELECT i.indisprimary, c.relname,
               array_agg(a.attname ORDER BY k.n) AS columns, bool_and(a.attnotnull) AS not_null
        FROM pg_index i
        JOIN pg_class c ON c.oid = i.indexrelid
        CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n)
        JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
        WHERE i.indrelid = %(oid)s AND i.indisunique AND i.indisvalid AND i.indpred IS NULL
              AND i.indexprs IS NULL
        GROUP BY i.indexrelid, i.indisprimary, c.relname
        ORDER BY i.indisprimary DESC, c.relname
        """,
        {"oid": oid},
        f"looking up the key of {table}",
        None,
    ).all()
    for primary, _, columns, not_null in rows:
        if primary or not_null:
            return tuple(columns)
    return None


# -- connections ---------------------------------------------------------------------------------------
_ENGINES: dict[str, Engine] = {}
_ENGINES_LOCK = threading.Lock()


def _engine(url: str, *, pooled: bool) -> Engine:
    """An engine for `url`: on the driver a throw-away one (no pool); in an entry-script process one per
    URL, kept for the process's later mini-batches (never pickled: sources carry only the URL)."""
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    if not pooled:
        return create_engine(url, poolclass=NullPool)
    with _ENGINES_LOCK:
        engine = _ENGINES.get(url)
        if engine is None:
            engine = _ENGINES[url] = create_engine(url, pool_size=1, max_overflow=1, pool_pre_ping=True)
        return engine


def _settle(conn: Connection, query_timeout: float) -> None:
    """The transaction's settings: `query_timeout` as statement_timeout, and fixed value formats."""
    settings = {"statement_timeout": f"{max(1, round(query_timeout * 1000))}ms", **SESSION_SETTINGS}
    for name, value in settings.items():
        conn.exec_driver_sql("SELECT set_config(%(n)s, %(v)s, true)", {"n": name, "v": value})


def _run(
    conn: Connection, statement: str, params: Mapping[str, Any], doing: str, timeout: float | None
) -> Any:
    """Executes `statement`; a statement timeout becomes an `InputError` that names `query_timeout`."""
    try:
        return conn.exec_driver_sql(statement, {"_apr": 0, **params})
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy's DBAPIError and its subclasses
        _raise_timeout(exc, doing, timeout)
        raise


def _raise_timeout(exc: BaseException, doing: str, timeout: float | None) -> None:
    if timeout is not None and _TIMEOUT_MESSAGE in str(exc):
        raise InputError(
            f"{doing} took longer than query_timeout={timeout:g} s (the database cancelled it); give "
            "from_sql_query a larger query_timeout"
        ) from exc
