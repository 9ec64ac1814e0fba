"""Azure ML compatibility: v2 parallel job YAML, MLTable inputs, PRS driver options, `azureml.core` stand-ins.

Airflow-free like the engine (it imports only the engine's public names), so the CLI, the operator and entry-script
processes can all use it. Names are loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_NAMES = {
    "AzureJob": "job_yaml",
    "load_azure_job": "job_yaml",
    "parse_name_map": "job_yaml",
    "MLTable": "mltable",
    "ColumnSteps": "mltable",
    "is_mltable": "mltable",
    "load_mltable": "mltable",
    "mltable_input": "mltable",
    "PrsArguments": "prs_arguments",
    "split_prs_arguments": "prs_arguments",
    "install_azureml_core_fallback": "azureml_fallback",
}

__all__ = [
    "AzureJob",
    "ColumnSteps",
    "MLTable",
    "PrsArguments",
    "install_azureml_core_fallback",
    "is_mltable",
    "load_azure_job",
    "load_mltable",
    "mltable_input",
    "parse_name_map",
    "split_prs_arguments",
]

if TYPE_CHECKING:
    from .azureml_fallback import install_azureml_core_fallback
    from .job_yaml import AzureJob, load_azure_job, parse_name_map
    from .mltable import ColumnSteps, MLTable, is_mltable, load_mltable, mltable_input
    from .prs_arguments import PrsArguments, split_prs_arguments


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        return getattr(importlib.import_module(f"{__name__}.{_NAMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
