"""The assets the partition examples share (no DAG here).

- `SCORED_DIGITS_DAILY`: every day's scores of `partitioned_daily_scoring`, one partition per day;
  `weekly_digit_scores` rolls them up by week.
- `DIGIT_ARRIVALS`: the landing folder `<demo root>/data/arrivals/`, watched by a
  `PartitionArrivalTrigger` (an `AssetWatcher`): one event per sub-folder that lands complete (a
  `_SUCCESS` marker in it).
- `COMPLETE_DIGIT_PARTITIONS`: the same arrivals as partitioned events (`announce_digit_arrivals`
  re-announces each watcher event with its key); `arrival_driven_scoring` runs once per key.
- `SCORED_DIGIT_ARRIVALS`: the scores of `arrival_driven_scoring`, one partition per arrival;
  `scored_partition_report` runs once per scored partition.

Defined once so that a producer and its consumers name the same asset. The watcher polls every
`ARRIVAL_POKE_INTERVAL` seconds (the environment variable `AIRFLOW_PARALLEL_RUN_ARRIVAL_POKE_S`
overrides it, read when the file is parsed).
"""

from __future__ import annotations

import os
from pathlib import Path

from airflow.sdk import Asset, AssetWatcher

from airflow_parallel_run.watchers import PartitionArrivalTrigger

HERE = Path(__file__).resolve().parent
DEMO_ROOT = os.environ.get("AIRFLOW_PARALLEL_RUN_DEMO_ROOT", str(HERE.parent / "demo_output"))
ARRIVALS = f"{DEMO_ROOT}/data/arrivals"
ARRIVAL_POKE_INTERVAL = float(os.environ.get("AIRFLOW_PARALLEL_RUN_ARRIVAL_POKE_S", "30"))

SCORED_DIGITS_DAILY = Asset(
    name="scored_digits_daily", uri=Path(f"{DEMO_ROOT}/output/partitioned_daily_scoring").as_uri()
)
DIGIT_ARRIVALS = Asset(
    name="digit_arrivals",
    uri=Path(ARRIVALS).as_uri(),
    watchers=[
        AssetWatcher(
            name="digit_arrivals_watcher",
            trigger=PartitionArrivalTrigger(
                ARRIVALS,
                marker_file="_SUCCESS",
                poke_interval=ARRIVAL_POKE_INTERVAL,
                # a partition not announced this long after its event is fired again (the event was lost)
                refire_after=max(60.0, 10 * ARRIVAL_POKE_INTERVAL),
            ),
        )
    ],
)
COMPLETE_DIGIT_PARTITIONS = Asset(
    name="complete_digit_partitions", uri="parallel-run://digit_arrivals/complete"
)
SCORED_DIGIT_ARRIVALS = Asset(
    name="scored_digit_arrivals", uri=Path(f"{DEMO_ROOT}/output/arrival_driven_scoring").as_uri()
)
