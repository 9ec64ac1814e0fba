"""What need not run again: the reuse cache (`allow_reuse`), its keys, and what a job looks up and stores there.

A mini-batch's key (key.py) holds everything that can change what `run()` returns: the job's components
(components.py: code, arguments, side inputs, settings) and the mini-batch's own units and their content
fingerprints. Entries (cache.py) are verified on read. `Reuse` (reuse.py) is a job's view of it.
"""
