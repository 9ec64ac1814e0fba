"""On each Dask worker: the Dask task of one attempt (attempt.py), the entry-script processes that run the
user's script (process.py, child.py), and the job's state on the worker.

Imports nothing eagerly: the entry-script process imports only the modules it needs.
"""
