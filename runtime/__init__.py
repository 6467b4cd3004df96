"""The runtime: executes a compiled plan with a content-addressed cache and journal into xarray cubes.

It depends on the plan (intro.compiler.plan), never on the syntax. The subpackages:

- `engine`: the orchestration of `intro run` and `intro plan`: the run itself, the executor and its
  backend pool, progress and console output, the journal, memory trimming, and the keys of the
  calls a measure step makes itself;
- `store`: what is stored and read back: the cache, the cubes, their integrity checks, `intro cache`'s
  store check, export and the comparison of two runs;
- `backends`: the model side: the request/response types every backend speaks, the in-process
  (transformers) and litellm backends, retries of API calls, residual-stream steering and activation
  readouts;
- `training`: fine-tuning steps: training data, LoRA adapters trained in process, and API fine-tuning;
- `analysis`: measures, metrics, calibration, behaviour change, the concept-injection experiments
  (`injected_thought`, `sentence_trials`) and the report;
- `serve`: `intro serve`, an OpenAI-compatible HTTP server over any backend.
"""
