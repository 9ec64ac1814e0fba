"""Writes the OJ example's data: a small simulated OJ sales CSV (oj_sales_data/) and what the pipeline's
partition_job makes of it (partitioned/: one folder per Store/Brand and an MLTable over them), by running the
job's own script. Usage: python make_data.py [FOLDER] [--stores N] [--weeks N] (default: this example's folder)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import numpy as np
import pandas as pd

BRANDS = ("dominicks", "minute.maid", "tropicana")


def sales(stores: int, weeks: int, seed: int = 12) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    starts = pd.date_range("1990-06-14", periods=weeks, freq="7D")
    for store in range(1000, 1000 + stores):
        for brand in BRANDS:
            base = rng.uniform(8000, 15000)
            for week, start in enumerate(starts):
                price = round(rng.uniform(1.5, 3.5), 2)
                advert = int(rng.integers(0, 2))
                quantity = int(
                    base * (1 + 0.2 * np.sin(week / 4)) - 1500 * price + 800 * advert + rng.normal(0, 300)
                )
                rows.append((start.date().isoformat(), store, brand, max(quantity, 100), advert, price))
    frame = pd.DataFrame(rows, columns=["WeekStarting", "Store", "Brand", "Quantity", "Advert", "Price"])
    frame["Revenue"] = (frame["Quantity"] * frame["Price"]).round(2)
    return frame


def main() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("folder", nargs="?", default=here)
    parser.add_argument("--stores", type=int, default=4)
    parser.add_argument("--weeks", type=int, default=60)
    args = parser.parse_args()
    data = os.path.join(args.folder, "oj_sales_data", "oj_sales_data.csv")
    os.makedirs(os.path.dirname(data), exist_ok=True)
    sales(args.stores, args.weeks).to_csv(data, index=False)
    script = os.path.join(here, "src", "partition_data", "partition_data.py")
    target = os.path.join(args.folder, "partitioned")
    subprocess.run(
        [
            sys.executable,
            script,
            "--data_source",
            data,
            "--partition_keys",
            "Store,Brand",
            "--tabular_output_data",
            target,
        ],
        check=True,
    )
    print(f"wrote {data} and the partitioned MLTable {target}")


if __name__ == "__main__":
    main()
