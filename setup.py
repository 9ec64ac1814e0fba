"""The one native piece: the CSV / JSON Lines record scan (airflow_parallel_run/core/inputs/_record_scan.c).

Everything else is in pyproject.toml. The extension is optional: without a C compiler the install still
succeeds and the planner uses its numpy scan, which decides the same record ends, only slower.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "airflow_parallel_run.core.inputs._record_scan",
            sources=["airflow_parallel_run/core/inputs/_record_scan.c"],
            extra_compile_args=["-O2"],
            optional=True,
        )
    ]
)
