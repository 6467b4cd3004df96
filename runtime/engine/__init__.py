"""The orchestration of a run: `run` executes plans into study directories, `executor` runs steps through
the cache and the backend `pool`, `progress` and `console` show and log it, `journal` records finished
steps, and `planview` is `intro plan`'s summary.
"""
