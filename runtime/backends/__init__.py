"""The model side of the runtime: `requests` holds the types every backend speaks (the `Backend`
protocol, requests, generations, scores, errors); `local` and `local_model` run models in process with
transformers, `embedded` assembles the packaged embedded models, `litellm_backend` calls providers and
`retry` decides which of its calls (and of API fine-tuning's) are tried again and when; `steering` and
`local_steering` add vectors to the residual stream, and `activations` reads concept vectors and
activations from it; `memory` measures the machine's memory and keeps the process's resident memory near
what is live; `precision` picks the dtype a device computes in and `batching` sizes batches to memory.
"""
