"""The one native piece: the CSV / JSON Lines record scan (airflow_parallel_run/core/inputs/_record_scan.c).

Everything else is in pyproject.toml. The extension is optional: without a C compiler the install still
succeeds and the planner uses its numpy scan, which decides the same record ends, only slower.
"""

import hashlib
from pathlib import Path

from setuptools import Extension, setup

SOURCE = "airflow_parallel_run/core/inputs/_record_scan.c"
# The module carries the digest of the source it was built from: the planner uses it only while that is the
# source next to it (core/inputs/tabular_scan.py), never a module left over from an older checkout.
DIGEST = hashlib.sha256((Path(__file__).parent / SOURCE).read_bytes()).hexdigest()

setup(
    ext_modules=[
        Extension(
            "airflow_parallel_run.core.inputs._record_scan",
            sources=[SOURCE],
            define_macros=[("APR_SOURCE_SHA256", f'"{DIGEST}"')],
            extra_compile_args=["-O2"],
            optional=True,
        )
    ]
)
