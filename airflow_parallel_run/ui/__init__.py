"""The "Parallel run" pages inside the Airflow UI: a FastAPI app mounted in the API server by
`airflow_parallel_run.plugin.ParallelRunPlugin`.

The pages read what a job recorded for its task instance (XCom `parallel_run_job`) and the files the
engine wrote there (`logs/sys/progress.json`, the report, the attempts CSV, the output), with the
credentials of the job's `storage_conn_id`. Nothing here runs inside a task.
"""
