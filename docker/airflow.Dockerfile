# Apache Airflow 3.3.2 with airflow-parallel-run (the provider: ParallelRunOperator, DaskHook, ...).
# Build from the repository root:  docker build -f docker/airflow.Dockerfile -t airflow-parallel-run/airflow .
# dask/distributed are pinned to the versions of the worker image (docker/worker.Dockerfile): a Dask
# client and its cluster must run the same versions.
ARG AIRFLOW_IMAGE=apache/airflow:3.3.2
FROM ${AIRFLOW_IMAGE}

ARG AIRFLOW_VERSION=3.3.2
ARG DASK_VERSION=2026.8.0
# Extras of airflow-parallel-run: `airflow` (the provider), `s3` (s3fs for s3:// URLs), `demo`
# (scikit-learn and pillow, for the example DAGs' entry scripts and demo data).
ARG APR_EXTRAS=airflow,s3,demo

# setup.py builds the native CSV record scan where the image has a C compiler; without one the install
# still succeeds and the planner uses its numpy scan (same plans, slower).
COPY --chown=airflow:0 pyproject.toml setup.py README.md /opt/airflow-parallel-run/
COPY --chown=airflow:0 airflow_parallel_run /opt/airflow-parallel-run/airflow_parallel_run

# The image's own rule: install next to the pinned Airflow, never upgrading it by accident.
RUN pip install --no-cache-dir \
        "apache-airflow==${AIRFLOW_VERSION}" \
        "dask==${DASK_VERSION}" "distributed==${DASK_VERSION}" \
        "/opt/airflow-parallel-run[${APR_EXTRAS}]" \
    && airflow providers list | grep -q airflow-parallel-run
