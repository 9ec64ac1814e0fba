# A Dask worker (or scheduler) for airflow-parallel-run jobs: Python, dask/distributed and the engine.
# No Airflow: the engine (`airflow_parallel_run.core`) never imports it.
# Build from the repository root:  docker build -f docker/worker.Dockerfile -t airflow-parallel-run/dask .
ARG PYTHON_IMAGE=python:3.12-slim
FROM ${PYTHON_IMAGE}

ARG DASK_VERSION=2026.8.0
# Extras: `s3` (s3fs), `demo` (scikit-learn, pillow: what the example entry scripts import). Add your
# entry scripts' own dependencies here, or in an image built FROM this one.
ARG APR_EXTRAS=s3,demo
# Same uid as the Airflow image's `airflow` user, so both can write the shared output/cache volume.
ARG APR_UID=50000

RUN useradd --create-home --uid "${APR_UID}" --gid 0 dask

COPY pyproject.toml setup.py README.md /opt/airflow-parallel-run/
COPY airflow_parallel_run /opt/airflow-parallel-run/airflow_parallel_run

# The worker install line (docs/deploy.md): the package without the `airflow` extra.
RUN pip install --no-cache-dir \
        "dask==${DASK_VERSION}" "distributed==${DASK_VERSION}" \
        "/opt/airflow-parallel-run[${APR_EXTRAS}]" \
    && python -c "import airflow_parallel_run.core, sys; assert 'airflow' not in sys.modules"

USER dask
WORKDIR /home/dask
EXPOSE 8786 8787
CMD ["dask", "worker", "tcp://dask-scheduler:8786"]
