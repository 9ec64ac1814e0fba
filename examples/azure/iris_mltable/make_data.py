"""Writes the iris example's inputs: an MLTable folder of iris rows and a model folder (scikit-learn's copy of
the iris data set; no download). Usage: python make_data.py [FOLDER] (default: this example's folder)."""

from __future__ import annotations

import os
import pickle
import sys

import numpy as np
import pandas as pd
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

MLTABLE = """\
$schema: https://azuremlschemas.azureedge.net/latest/MLTable.schema.json
type: mltable
paths:
  - file: ./iris.csv
transformations:
  - read_delimited:
      delimiter: ','
      encoding: 'ascii'
      header: all_files_same_headers
"""
COLUMNS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def main(folder: str, copies: int = 10) -> None:
    iris = load_iris()
    features = pd.DataFrame(iris.data, columns=COLUMNS)
    rng = np.random.default_rng(7)
    rows = pd.concat(
        [features + rng.normal(0, 0.05, features.shape).round(2) * (i > 0) for i in range(copies)],
        ignore_index=True,
    ).round(2)
    rows["variety"] = [iris.target_names[t] for t in np.tile(iris.target, copies)]
    table = os.path.join(folder, "neural-iris-mltable")
    os.makedirs(table, exist_ok=True)
    rows.to_csv(os.path.join(table, "iris.csv"), index=False)
    with open(os.path.join(table, "MLTable"), "w", encoding="utf-8") as handle:
        handle.write(MLTABLE)
    # integer labels, as the sample's model: run() assigns predict()'s (rows, 1) array to a column, which pandas
    # 3 accepts for numbers but not for strings
    model = LogisticRegression(max_iter=500).fit(features.values, iris.target)
    model_dir = os.path.join(folder, "iris-model")
    os.makedirs(model_dir, exist_ok=True)
    with open(os.path.join(model_dir, "model.pkl"), "wb") as handle:
        pickle.dump(model, handle)
    with open(os.path.join(model_dir, "MLmodel"), "w", encoding="utf-8") as handle:
        handle.write("flavors:\n  sklearn:\n    pickled_model: model.pkl\n")
    print(f"wrote {len(rows)} rows to {table} and a model to {model_dir}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__)))
