"""Entry script: classifies 8x8 handwritten-digit PNGs (file input), Azure ParallelRunStep style.

Arguments (parsed with parse_known_args, so extra ones are ignored):
  --model PATH   pickled scikit-learn classifier trained on the 64 grey values scaled to [0, 1]
  --labels PATH  optional CSV `digit,word`; when given, each line also gets the word (e.g. "7 seven")

run() returns one line per image it could classify: "<file name> <digit>[ <word>]". A file that is
not a readable 8x8 image is logged and left out of the result, so it counts as one failed item
instead of failing the whole mini-batch.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import pickle
from typing import Any

import numpy as np
from PIL import Image

from airflow_parallel_run import EntryScript

model: Any = None
words: dict[int, str] = {}
logger = logging.getLogger(__name__)


def _read_labels(path: str) -> dict[int, str]:
    with open(path, newline="", encoding="utf-8") as handle:
        rows = [row for row in csv.reader(handle) if len(row) >= 2]
    return {int(row[0]): row[1].strip() for row in rows if row[0].strip().isdigit()}  # skips the header


def _pixels(path: str) -> np.ndarray:
    """The model's features: grey values 0-255 scaled to [0, 1], row by row (as in training)."""
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("L"), dtype=np.float64)
    if pixels.shape != (8, 8):
        raise ValueError(f"expected an 8x8 image, got {pixels.shape[1]}x{pixels.shape[0]}")
    return pixels.reshape(-1) / 255.0


def init() -> None:
    """Loads the model once per entry-script process, not once per mini-batch."""
    global model, words, logger
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--labels", default=None)
    args, _unknown = parser.parse_known_args()
    logger = EntryScript().logger
    with open(args.model, "rb") as handle:
        model = pickle.load(handle)
    words = _read_labels(args.labels) if args.labels else {}
    logger.info(
        "loaded model %s%s", args.model, f" and {len(words)} labels from {args.labels}" if words else ""
    )


def run(mini_batch: list[str]) -> list[str]:
    """Predicts the whole mini-batch in one call; unreadable files are skipped (= failed items)."""
    names: list[str] = []
    rows: list[np.ndarray] = []
    for path in mini_batch:
        try:
            rows.append(_pixels(path))
        except (OSError, ValueError) as exc:  # PIL.UnidentifiedImageError is an OSError
            logger.warning("skipping %s: %s", path, exc)
            continue
        names.append(os.path.basename(path))
    if not rows:
        return []
    predictions = model.predict(np.stack(rows))
    results = []
    for name, digit in zip(names, predictions, strict=True):
        line = f"{name} {int(digit)}"
        if words:
            line += f" {words.get(int(digit), '?')}"
        results.append(line)
    return results
