"""Reading a run's results: `metrics` (rates, intervals, scores), `report` (the figures and tables of
`intro report`) and `resultdiff` (`intro diff` of two runs, cube by cube).
"""
