"""Entry script: predicts the iris species of each row (tabular input), Azure ParallelRunStep style.

Arguments (parsed with parse_known_args): --model PATH, a pickled scikit-learn classifier fitted on
a DataFrame (its `feature_names_in_` name the columns it reads).

run() returns the mini-batch's rows with a `prediction` column added. Every input column is kept
(also a known label, if the table has one), so the output can be joined or evaluated without going
back to the input. Rows with a missing feature value are logged and left out: they count as failed
items, and the rest of the mini-batch still succeeds.
"""

from __future__ import annotations

import argparse
import logging
import pickle
from typing import Any

import pandas as pd

from airflow_parallel_run import EntryScript

model: Any = None
logger = logging.getLogger(__name__)


def init() -> None:
    """Loads the model once per entry-script process."""
    global model, logger
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    args, _unknown = parser.parse_known_args()
    logger = EntryScript().logger
    with open(args.model, "rb") as handle:
        model = pickle.load(handle)
    logger.info("loaded model %s (features: %s)", args.model, list(getattr(model, "feature_names_in_", [])))


def run(mini_batch: Any) -> Any:
    """One prediction per complete row, in input order. With batch_format="pyarrow" the mini-batch is a
    pyarrow Table, and so is the result (scikit-learn reads the features through pandas either way)."""
    if not isinstance(mini_batch, pd.DataFrame):  # a pyarrow Table
        import pyarrow as pa

        return pa.Table.from_pandas(_predict(mini_batch.to_pandas()), preserve_index=False)
    return _predict(mini_batch)


def _predict(mini_batch: pd.DataFrame) -> pd.DataFrame:
    columns = list(getattr(model, "feature_names_in_", mini_batch.select_dtypes("number").columns))
    missing = [c for c in columns if c not in mini_batch.columns]
    if missing:
        raise KeyError(f"the input has no column(s) {missing}; it has {list(mini_batch.columns)}")
    complete = mini_batch[columns].notna().all(axis=1)
    if not complete.all():
        logger.warning("skipping %d row(s) with missing feature values", int((~complete).sum()))
    result = mini_batch.loc[complete].reset_index(drop=True)
    if result.empty:
        return result
    result["prediction"] = model.predict(result[columns])
    return result
