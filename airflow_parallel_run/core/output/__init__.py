"""What comes out of a job: output formats, the run() result contract, the job's one schema, assembly,
the output folder and the files scripts write to output_dir.

Imports nothing eagerly: the entry-script process loads only the modules it needs.
"""
