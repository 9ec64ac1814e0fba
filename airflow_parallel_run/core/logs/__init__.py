"""The logs a job leaves in <output>/logs (the ParallelRunStep layout): what the driver writes (joblogs.py)
and the one-page HTML report built from them (report.py)."""
