"""The orchestration of a run: `run` executes plans into study directories, `executor` runs steps through
the cache and the backend `pool`, `progress` and `console` show and log it, `journal` records finished
steps, `memory` keeps resident memory near what is live, `planview` is `intro plan`'s summary, and
`experiment_calls` holds the keys of the calls a measure step makes itself.
"""
