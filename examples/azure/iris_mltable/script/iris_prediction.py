"""Scores iris rows with the model given as --model (the shape of Azure's iris_prediction.py)."""

import argparse
import os
import pickle


def load_model(path):
    # Azure's sample calls mlflow.sklearn.load_model(path), which reads the model.pkl of the MLflow model folder
    with open(os.path.join(path, "model.pkl"), "rb") as handle:
        return pickle.load(handle)


def init():
    parser = argparse.ArgumentParser(allow_abbrev=False, description="ParallelRunStep Agent")
    parser.add_argument("--model", type=str, default=0)
    args, _ = parser.parse_known_args()

    global iris_model

    iris_model = load_model(args.model)


def run(input_data):
    num_rows, num_cols = input_data.shape
    pred = iris_model.predict(input_data.iloc[:, :4]).reshape((num_rows, 1))

    # cleanup output
    result = input_data.drop(input_data.columns[4:], axis=1)
    result["variety"] = pred

    return result
