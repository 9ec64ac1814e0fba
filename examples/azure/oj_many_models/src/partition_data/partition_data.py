"""The pipeline's command job: splits the sales CSV into one folder per partition key and writes an MLTable over
them that adds the key columns back from the folder names (the shape of Azure's partition_data.py)."""

import argparse
import os
import re

import pandas as pd
import yaml


def normalize_path_value(value: str) -> str:
    return re.sub(r"[.\s\\|*/<>?:\"]", "_", value)


def dump_df_to_mltable(input_df, target_path, partition_cols):
    for col in partition_cols:
        if col not in input_df.columns:
            raise Exception(f"No partition column {col} in the input data")
    for group_name, group_df in input_df.groupby(partition_cols):
        names = group_name if isinstance(group_name, tuple) else (group_name,)
        folder = os.path.join(target_path, *[normalize_path_value(str(n)) for n in names])
        os.makedirs(folder, exist_ok=True)
        group_df.drop(columns=partition_cols).to_csv(
            os.path.join(folder, "partitioned_data.csv"), index=False
        )

    partition_format = "".join("{" + c + "}/" for c in partition_cols) + "{file_name}.{extension}"
    mltable = {
        "type": "mltable",
        "paths": [{"pattern": "./**/*.csv"}],
        "transformations": [
            {
                "read_delimited": {
                    "delimiter": ",",
                    "encoding": "ascii",
                    "header": "all_files_same_headers",
                    "empty_as_string": False,
                    "include_path_column": True,
                }
            },
            {"extract_columns_from_partition_format": {"partition_format": partition_format}},
            {"drop_columns": ["Path", "file_name", "extension"]},
        ],
    }
    with open(os.path.join(target_path, "MLTable"), "w") as yaml_file:
        yaml.dump(mltable, yaml_file, default_flow_style=False)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--data_source", type=str)
    parser.add_argument("--partition_keys", type=str)
    parser.add_argument("--tabular_output_data", type=str)
    args, _ = parser.parse_known_args()
    dump_df_to_mltable(
        pd.read_csv(args.data_source), args.tabular_output_data, args.partition_keys.split(",")
    )
