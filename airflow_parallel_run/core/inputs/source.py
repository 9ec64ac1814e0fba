"""What the engine takes as an input."""

from __future__ import annotations

from .files import FileDataset
from .tabular import TabularDataset

Dataset = FileDataset | TabularDataset
