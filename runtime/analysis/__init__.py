"""What is measured and how it is read: `measures` and `metrics` (rates, intervals, scores), `calibration`,
`behaviour_change`, the concept-injection experiments (`injected_thought`: vector steps and the
injected-thought detection trials; `sentence_trials`: thoughts vs text, prefill intention and
think / don't think), and `report`, the figures and tables of `intro report`.
"""
