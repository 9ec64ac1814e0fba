"""`airflow-parallel-run`: the engine without Airflow, for local runs and testing entry scripts.

Exit codes: 0 the job succeeded, 1 it failed, 2 usage or configuration error (one message, no traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

from .cli_signals import Interrupted, SignalRelay
from .core.config import BATCH_FORMATS, LOGGING_LEVELS, OUTPUT_ACTIONS
from .core.output.formats import format_names

FORMATS = {"csv": "csv", "parquet": "parquet", "json": "jsonl", "jsonl": "jsonl"}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse's own exit code is 2 as well; keep the message short
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _env_pair(text: str) -> tuple[str, str]:
    if "=" not in text or not text.split("=", 1)[0]:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    return key, value


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON ({exc}): {text!r}") from None
    if not isinstance(value, dict) or not isinstance(value.get("type"), str):
        raise argparse.ArgumentTypeError(f'expected a JSON object with a "type", got {text!r}')
    return value


def _int_or_size(text: str) -> int | str:
    return int(text) if text.isdigit() else text


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="airflow-parallel-run", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = _add_run_parser(sub)
    parser.set_defaults(run_parser=run)
    _add_report_parser(sub)
    _add_cache_parser(sub)
    return parser


def _add_run_parser(sub: Any) -> argparse.ArgumentParser:
    """`run`: inputs and outputs, an Azure ML job YAML, and the ParallelRunConfig fields."""
    run = sub.add_parser(
        "run",
        help="run an entry script over inputs",
        description="Run an entry script's run(mini_batch) over file or tabular inputs on Dask. "
        "Everything after `--` is passed to the script as arguments (sys.argv).",
    )
    run.error = _Parser.error.__get__(run)  # type: ignore[method-assign]
    _input_arguments(run)
    _azure_arguments(run)
    _config_arguments(run)
    _rerun_arguments(run)
    return run  # type: ignore[no-any-return]


def _input_arguments(run: argparse.ArgumentParser) -> None:
    io = run.add_argument_group("inputs and outputs")
    io.add_argument(
        "--input",
        action="append",
        help="path, glob, folder or fsspec URL (repeatable); with --azure-job: NAME=PATH_OR_URL for an input of the "
        "job's YAML",
    )
    io.add_argument(
        "--dataset",
        action="append",
        default=[],
        type=_json_object,
        metavar="JSON",
        help="an input of any installed type as JSON, e.g. "
        '\'{"type": "TabularDataset", "paths": ["/data"], "format": "parquet"}\' (repeatable; after the --input ones)',
    )
    io.add_argument("--input-type", choices=["file", "tabular"], default="file")
    io.add_argument(
        "--format", choices=sorted(FORMATS), default="csv", help="tabular file format (default csv)"
    )
    io.add_argument("--separator", default=",", help="delimiter for --format csv")
    io.add_argument("--no-header", action="store_true", help="CSV files have no header row")
    io.add_argument(
        "--encoding", default="utf-8", help="text encoding of CSV and JSON Lines files (default utf-8)"
    )
    io.add_argument(
        "--partition-format", help="e.g. '{user}/{season}/{genres}.wav' (default: hive key=value folders)"
    )
    io.add_argument(
        "--side-input", action="append", default=[], help="file or folder available on every worker"
    )
    io.add_argument("--output", help="output folder (path or fsspec URL); required unless --rerun-failed")
    io.add_argument(
        "--scheduler", help="Dask scheduler address (default: embedded LocalCluster on 127.0.0.1)"
    )
    io.add_argument("--json", action="store_true", help="print only the summary JSON on stdout")
    io.add_argument(
        "--cache-dir",
        help="reuse cache root (default: $AIRFLOW_PARALLEL_RUN_CACHE or ~/.cache/airflow-parallel-run)",
    )
    io.add_argument(
        "--no-reuse",
        action="store_true",
        help="run every mini-batch again (allow_reuse=False); the cache is still refreshed",
    )


def _azure_arguments(run: argparse.ArgumentParser) -> None:
    azure = run.add_argument_group("Azure ML v2 parallel job (docs/azure.md)")
    azure.add_argument(
        "--azure-job",
        metavar="YAML",
        help="run the parallel job of an Azure ML job, component or pipeline YAML; --input NAME=PATH_OR_URL gives "
        "the inputs that point into Azure; ParallelRunConfig flags given here override the YAML",
    )
    azure.add_argument("--azure-job-name", help="the parallel job to run when the pipeline YAML has several")
    azure.add_argument(
        "--job-output",
        action="append",
        default=[],
        metavar="NAME=PATH_OR_URL",
        help="where an output of the job other than append_row_to goes (default: <--output>/NAME)",
    )


def _config_arguments(run: argparse.ArgumentParser) -> None:
    cfg = run.add_argument_group("ParallelRunConfig")
    cfg.add_argument("--entry-script")
    cfg.add_argument("--source-directory")
    cfg.add_argument(
        "--mini-batch-size", type=_int_or_size, help="files (file input) or bytes like 1MB (tabular)"
    )
    cfg.add_argument("--partition-keys", type=lambda s: [k.strip() for k in s.split(",") if k.strip()])
    cfg.add_argument("--error-threshold", type=int, default=-1)
    cfg.add_argument("--allowed-failed-count", type=int)
    cfg.add_argument("--allowed-failed-percent", type=float)
    cfg.add_argument("--output-action", choices=OUTPUT_ACTIONS, default="append_row")
    cfg.add_argument(
        "--append-row-file-name",
        help="default: parallel_run_step.<txt|csv|jsonl|parquet> by --append-row-format",
    )
    cfg.add_argument("--append-row-format", choices=format_names(), default="text")
    cfg.add_argument(
        "--batch-format",
        choices=BATCH_FORMATS,
        default="pandas",
        help="what run() gets for a tabular mini-batch: a pandas DataFrame (default) or a pyarrow Table",
    )
    cfg.add_argument("--node-count", type=int, default=1)
    cfg.add_argument("--process-count-per-node", type=int)
    cfg.add_argument(
        "--max-concurrency-per-process",
        type=int,
        default=1,
        help="mini-batches in flight at once in one entry-script process; needs `async def run(mini_batch)`",
    )
    cfg.add_argument("--run-invocation-timeout", type=float, default=60)
    cfg.add_argument("--run-max-try", type=int, default=3)
    cfg.add_argument(
        "--progress-update-timeout",
        type=float,
        help="fail the job when no mini-batch finished or failed for this many seconds "
        "(default: 3 x (run-invocation-timeout + 600))",
    )
    cfg.add_argument(
        "--first-task-creation-timeout",
        type=float,
        help="fail the job when no entry-script process is ready (init() returned) after this many seconds "
        "(default: 600, or run-invocation-timeout when longer)",
    )
    cfg.add_argument(
        "--speculative-execution",
        action="store_true",
        default=False,
        help="once nothing is left to dispatch, give a straggling mini-batch a second attempt on an idle process",
    )
    cfg.add_argument(
        "--speculation-multiplier",
        type=float,
        default=3.0,
        help="a straggler runs longer than this times the median mini-batch duration (default 3)",
    )
    cfg.add_argument("--logging-level", choices=LOGGING_LEVELS, type=str.upper, default="INFO")
    cfg.add_argument(
        "--environment-variables", type=_env_pair, action="append", default=[], metavar="KEY=VALUE"
    )
    cfg.add_argument("--resource-monitor-interval", type=float, default=600)


def _add_report_parser(sub: Any) -> None:
    report = sub.add_parser("report", help="write a self-contained HTML report of a job's logs")
    report.error = _Parser.error.__get__(report)  # type: ignore[method-assign]
    report.add_argument("logs", help="the job's output folder or its logs folder")
    report.add_argument("-o", "--output", help="HTML file to write (default: <logs>/report.html)")


def _add_cache_parser(sub: Any) -> None:
    cache = sub.add_parser("cache", help="inspect or clean the reuse cache")
    cache.error = _Parser.error.__get__(cache)  # type: ignore[method-assign]
    cache.add_argument("action", choices=["info", "prune", "clear"])
    cache.add_argument(
        "--older-than", type=_duration, help="with prune: entries older than e.g. 7d, 12h, 30m"
    )
    cache.add_argument(
        "--cache-dir",
        help="cache root (default: $AIRFLOW_PARALLEL_RUN_CACHE or ~/.cache/airflow-parallel-run)",
    )


def _duration(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    if len(text) < 2 or text[-1] not in units or not text[:-1].replace(".", "", 1).isdigit():
        raise argparse.ArgumentTypeError(f"expected a duration like 7d, 12h, 30m or 90s, got {text!r}")
    return float(text[:-1]) * units[text[-1]]


def _cache(args: argparse.Namespace) -> int:
    from .core.reuse.cache import MiniBatchCache, resolve_cache_root

    cache = MiniBatchCache(resolve_cache_root(args.cache_dir))
    if args.action == "info":
        print(json.dumps(cache.info(), indent=2))
    elif args.action == "prune":
        if args.older_than is None:
            print("airflow-parallel-run: error: cache prune needs --older-than (e.g. 7d)", file=sys.stderr)
            return 2
        print(f"removed {cache.prune(args.older_than)} entries from {cache.root}")
    else:
        print(f"removed {cache.clear()} entries from {cache.root}")
    return 0


def _inputs_from_args(args: argparse.Namespace) -> list[Any]:
    """The `--input` paths as one FileDataset or TabularDataset (`--input-type`; a local MLTable folder or file
    given without --input-type tabular or --partition-format: its MLTable input), then each `--dataset`."""
    from .core import FileDataset, TabularDataset
    from .core.errors import ConfigError
    from .core.inputs import dataset_from_dict
    from .core.inputs.normalise import to_datasets

    inputs: list[Any] = []
    if args.input and args.input_type == "file" and args.partition_format is None:
        inputs.extend(to_datasets(args.input))  # an MLTable folder or file is read as its YAML says
    elif args.input and args.input_type == "file":
        inputs.append(FileDataset.from_files(args.input, partition_format=args.partition_format))
    elif args.input:
        fmt = FORMATS[args.format]
        if fmt == "csv":
            inputs.append(
                TabularDataset.from_delimited_files(
                    args.input,
                    args.separator,
                    not args.no_header,
                    args.encoding,
                    partition_format=args.partition_format,
                )
            )
        elif fmt == "parquet":
            inputs.append(
                TabularDataset.from_parquet_files(args.input, partition_format=args.partition_format)
            )
        else:
            inputs.append(
                TabularDataset.from_json_lines_files(
                    args.input, args.encoding, partition_format=args.partition_format
                )
            )
    for document in args.dataset:
        try:
            inputs.append(dataset_from_dict(document))
        except (TypeError, KeyError) as exc:  # fields the type does not take, or lacks
            raise ConfigError("dataset", document, f"the fields of a {document['type']} ({exc})") from None
    return inputs


class _Startup:
    """Where the CLI is, for the signal handler: until the job runs, a signal ends the CLI at once
    (nothing it started outlives it: the embedded cluster lives in this process, entry-script
    processes exit when it does); once it runs, the first signal stops the job through its driver,
    which kills running attempts and writes the summary, and a second one ends the CLI at once."""

    def __init__(self) -> None:
        self.stage = "checking the configuration"
        self.driver: Any = None
        self.stopping = False
        self.relay = SignalRelay(self.handle)

    def handle(self, signum: int) -> None:
        """A SIGINT/SIGTERM, in the relay thread (cli_signals.py)."""
        if self.stage == "running" and self.driver is not None and not self.stopping:
            self.stopping = True
            self.driver.cancel(f"interrupted by signal {signal.Signals(signum).name}")  # flags only
            return
        self.relay.interrupt_main(signum)


def _run(args: argparse.Namespace, arguments: list[str], startup: _Startup) -> int:
    from .core import ConfigError, InputError, ParallelRunConfig

    try:
        config = ParallelRunConfig(
            entry_script=args.entry_script,
            source_directory=args.source_directory,
            mini_batch_size=args.mini_batch_size,
            partition_keys=args.partition_keys,
            error_threshold=args.error_threshold,
            allowed_failed_count=args.allowed_failed_count,
            allowed_failed_percent=args.allowed_failed_percent,
            output_action=args.output_action,
            append_row_file_name=args.append_row_file_name,
            append_row_format=args.append_row_format,
            batch_format=args.batch_format,
            node_count=args.node_count,
            process_count_per_node=args.process_count_per_node,
            max_concurrency_per_process=args.max_concurrency_per_process,
            run_invocation_timeout=args.run_invocation_timeout,
            run_max_try=args.run_max_try,
            progress_update_timeout=args.progress_update_timeout,
            first_task_creation_timeout=args.first_task_creation_timeout,
            speculative_execution=args.speculative_execution,
            speculation_multiplier=args.speculation_multiplier,
            logging_level=args.logging_level,
            environment_variables=dict(args.environment_variables),
            resource_monitor_interval=args.resource_monitor_interval,
        )
        inputs = _inputs_from_args(args)
    except (ConfigError, InputError) as exc:
        print(f"airflow-parallel-run: error: {exc}", file=sys.stderr)
        return 2
    return _execute(args, config, inputs, list(args.side_input), arguments, not args.no_reuse, startup)


def _execute(
    args: argparse.Namespace,
    config: Any,
    inputs: list[Any],
    side_inputs: list[str],
    arguments: list[str],
    allow_reuse: bool,
    startup: _Startup,
    rerun: Any = None,
) -> int:
    """Runs the job (`rerun`: only the failed items of a `PreviousJob`), printing progress and the summary;
    the exit code."""
    from .core import ConfigError, InputError
    from .core.driver import JobDriver, run_job
    from .core.driver.cluster import ClusterError
    from .core.summary import JobSummary

    stream = sys.stderr if args.json else sys.stdout
    progress = _progress_printer(stream)

    def keep(driver: JobDriver) -> None:
        startup.driver = driver
        startup.stage = "looking up reusable mini-batches and starting the Dask cluster"

    def running(_client: Any) -> None:
        startup.stage = "running"  # from here a signal stops the job the ordinary way (its summary says so)

    try:
        startup.stage = "planning the job and fingerprinting its inputs"
        summary = run_job(
            config,
            inputs,
            args.output,
            side_inputs=side_inputs,
            arguments=arguments,
            scheduler=args.scheduler,
            progress=progress,
            on_driver=keep,
            on_client=running,
            allow_reuse=allow_reuse,
            cache_dir=args.cache_dir,
            rerun=rerun,
            planned=rerun.plan if rerun is not None else None,
        )
    except (ConfigError, InputError) as exc:
        print(f"airflow-parallel-run: error: {exc}", file=sys.stderr)
        return 2
    except ClusterError as exc:
        print(f"airflow-parallel-run: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. the scheduler address cannot be reached
        print(
            f"airflow-parallel-run: error: cannot use Dask scheduler {args.scheduler!r}: {exc}",
            file=sys.stderr,
        )
        return 2
    _print_summary(summary, as_json=args.json)
    return 0 if JobSummary.from_dict(summary).succeeded else 1


def _progress_printer(stream: Any) -> Callable[[str], None]:
    """Progress lines to `stream`: a terminal gets the "Processed" line updated in place; logs and pipes
    get plain lines."""
    live = stream.isatty()

    def progress(line: str) -> None:
        if live and line.startswith("Processed "):
            stream.write("\r\033[K" + line)
            stream.flush()
            return
        print(
            ("\n" if live else "") + line if live and line.startswith("Job ") else line,
            file=stream,
            flush=True,
        )

    return progress


def _print_summary(summary: dict[str, Any], *, as_json: bool) -> None:
    """The summary on stdout: the JSON document (--json), else one `key: value` line per key."""
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        for key, value in summary.items():
            print(f"{key}: {value}")


#: Flags that describe inputs or the script, which an Azure job's YAML gives instead.
_NOT_WITH_AZURE_JOB = (
    "--input-type",
    "--format",
    "--separator",
    "--no-header",
    "--encoding",
    "--partition-format",
    "--entry-script",
    "--source-directory",
)


def _given(argv: Sequence[str]) -> set[str]:
    return {token.split("=", 1)[0] for token in argv if token.startswith("--")}


def _check_run_arguments(args: argparse.Namespace, argv: Sequence[str]) -> None:
    """The flags `run` needs: --input and --entry-script, or --azure-job (with which the YAML gives the script
    and how inputs are read). A usage error (exit code 2) names what is missing or not allowed."""
    parser = args.run_parser
    given = _given(argv)
    if args.rerun_failed is not None:
        _check_rerun_arguments(args, given)
        return
    if not args.output:
        parser.error("the following arguments are required: --output")
    if args.azure_job:
        clash = [flag for flag in _NOT_WITH_AZURE_JOB if flag in given]
        if clash:
            parser.error(f"argument {clash[0]}: not allowed with --azure-job (the job's YAML gives it)")
        return
    azure_only = [flag for flag in ("--azure-job-name", "--job-output") if flag in given]
    if azure_only:
        parser.error(f"argument {azure_only[0]}: only with --azure-job")
    missing = [
        flag
        for flag, value in (
            ("--input (or --dataset)", args.input or args.dataset),
            ("--entry-script", args.entry_script),
        )
        if not value
    ]
    if missing:
        parser.error(f"the following arguments are required: {', '.join(missing)}")


def _config_overrides(args: argparse.Namespace, given: set[str]) -> dict[str, Any]:
    """The ParallelRunConfig flags given on the command line (they win over the YAML, like a pipeline
    parameter set at submission)."""
    overrides: dict[str, Any] = {}
    for action in args.run_parser._actions:
        if action.dest in _CONFIG_FLAGS and any(o in given for o in action.option_strings):
            value = getattr(args, action.dest)
            overrides[action.dest] = dict(value) if action.dest == "environment_variables" else value
    return overrides


_CONFIG_FLAGS = (
    "mini_batch_size",
    "partition_keys",
    "error_threshold",
    "allowed_failed_count",
    "allowed_failed_percent",
    "output_action",
    "append_row_file_name",
    "append_row_format",
    "batch_format",
    "node_count",
    "process_count_per_node",
    "max_concurrency_per_process",
    "run_invocation_timeout",
    "run_max_try",
    "progress_update_timeout",
    "first_task_creation_timeout",
    "speculative_execution",
    "speculation_multiplier",
    "logging_level",
    "environment_variables",
    "resource_monitor_interval",
)


def _run_azure_job(args: argparse.Namespace, arguments: list[str], startup: _Startup) -> int:
    """`run --azure-job job.yml`: the YAML's parallel job, its inputs mapped with --input NAME=PATH_OR_URL."""
    from .azure.job_yaml import load_azure_job, parse_name_map
    from .core import ConfigError, InputError

    stream = sys.stderr if args.json else sys.stdout
    try:
        job = load_azure_job(
            args.azure_job,
            output_path=args.output,
            input_map=parse_name_map(args.input or []),
            output_map=parse_name_map(args.job_output, "--job-output"),
            job_name=args.azure_job_name,
        )
        overrides = _config_overrides(args, _given(args.argv))
        if "environment_variables" in overrides:
            overrides["environment_variables"] = {
                **job.config.environment_variables,
                **overrides["environment_variables"],
            }
        config = job.config.with_overrides(**overrides)
    except (ConfigError, InputError) as exc:
        print(f"airflow-parallel-run: error: {exc}", file=sys.stderr)
        return 2
    print(f"Azure job {job.name} ({job.source})", file=stream, flush=True)
    for line in job.notes():
        print(f"  {line}", file=stream, flush=True)
    return _execute(
        args,
        config,
        list(job.inputs),
        [*job.side_inputs, *args.side_input],
        [*job.arguments, *arguments],
        job.allow_reuse and not args.no_reuse,
        startup,
    )


# -- re-running the failed items of a job (core/reuse/rerun.py) -------------------------------------------
#: Flags a re-run takes; the previous job's record (logs/sys/job.json) gives every other one.
_WITH_RERUN = ("--rerun-failed", "--scheduler", "--json", "--cache-dir", "--environment-variables")


def _rerun_tunables() -> dict[str, str]:
    """The config flags a re-run may change ({flag: field}): those that cannot change a result (outside the
    reuse key, core/reuse/key.py), but mini_batch_size (the re-run runs the recorded mini-batches)."""
    from .core import ParallelRunConfig
    from .core.reuse.key import NOT_IN_KEY

    names = [name for name in NOT_IN_KEY[ParallelRunConfig] if name != "mini_batch_size"]
    return {f"--{name.replace('_', '-')}": name for name in names}


def _rerun_arguments(run: argparse.ArgumentParser) -> None:
    rerun = run.add_argument_group("re-running failed items")
    rerun.add_argument(
        "--rerun-failed",
        metavar="OUTPUT_FOLDER",
        help="run only the items that failed in the job that wrote OUTPUT_FOLDER (its logs/sys/job_report/"
        "failed_items.jsonl), with that job's script, inputs and settings; the output is completed in place. "
        "Takes only --scheduler, --json, --cache-dir (default: the previous job's cache), the job's "
        "--environment-variables (their values are not recorded) and the settings that cannot change a result "
        "(--run-invocation-timeout, --run-max-try, --process-count-per-node, --node-count, thresholds, logging)",
    )


def _check_rerun_arguments(args: argparse.Namespace, given: set[str]) -> None:
    clash = sorted(flag for flag in given if flag not in _WITH_RERUN and flag not in _rerun_tunables())
    if clash:
        args.run_parser.error(
            f"argument {clash[0]}: not allowed with --rerun-failed (the previous job's record gives it)"
        )
    if args.script_arguments:
        args.run_parser.error(
            "arguments after --: not allowed with --rerun-failed (the previous job's record gives them)"
        )


def _rerun_failed(args: argparse.Namespace, startup: _Startup) -> int:
    """`run --rerun-failed FOLDER`: the job recorded in FOLDER again, only its failed items run."""
    from .core import ConfigError, InputError
    from .core.reuse.rerun import PreviousJob

    try:
        previous = PreviousJob.load(args.rerun_failed)
        given = _given(args.argv)
        tunables = {name: getattr(args, name) for flag, name in _rerun_tunables().items() if flag in given}
        config = previous.config(dict(args.environment_variables)).with_overrides(**tunables)
        inputs = previous.inputs()
    except (ConfigError, InputError) as exc:
        print(f"airflow-parallel-run: error: {exc}", file=sys.stderr)
        return 2
    args.output = args.rerun_failed
    args.cache_dir = args.cache_dir or previous.cache_root
    return _execute(args, config, inputs, previous.side_inputs, previous.arguments, True, startup, previous)


def main(argv: Sequence[str] | None = None) -> int:
    # a message naming a file whose name is not UTF-8 is printed escaped, never a UnicodeEncodeError
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]
    argv = list(sys.argv[1:] if argv is None else argv)
    arguments: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, arguments = argv[:cut], argv[cut + 1 :]
    args = build_parser().parse_args(argv)
    args.argv = argv
    args.script_arguments = arguments
    if args.command == "run":
        _check_run_arguments(args, argv)
        from .core.driver.allocator import own_process  # lazy: the CLI's start imports no Dask

        own_process()  # the job's driver runs here and the process ends after it (core/driver/allocator.py)
        startup = _Startup()
        # SIGINT/SIGTERM are taken by the relay thread from here (cli_signals.py); one that was pending
        # when the CLI started is taken at once, as an interruption.
        with startup.relay:
            try:
                if args.rerun_failed is not None:
                    return _rerun_failed(args, startup)
                if args.azure_job:
                    return _run_azure_job(args, arguments, startup)
                return _run(args, arguments, startup)
            except Interrupted as exc:
                startup.relay.caught_it()
                name = signal.Signals(exc.signum).name
                print(
                    f"airflow-parallel-run: interrupted by {name} while {startup.stage}; the job did not run "
                    "and nothing it started is left running",
                    file=sys.stderr,
                )
                return 128 + exc.signum
    if args.command == "cache":
        return _cache(args)
    if args.command == "report":
        import os

        from .core.logs.report import build_report

        logs = (
            args.logs
            if os.path.basename(args.logs.rstrip("/")) == "logs"
            else os.path.join(args.logs, "logs")
        )
        if not os.path.isdir(logs):
            print(f"airflow-parallel-run: error: no logs folder at {logs}", file=sys.stderr)
            return 2
        print(build_report(logs, args.output))
        return 0
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
