"""`intro serve`: an OpenAI-compatible HTTP server over any `Backend`, with OpenAI's fine-tuning endpoints.

It lets anything that speaks the OpenAI chat API (litellm, the openai client, curl, another machine's
intro) use a model that runs in this process, e.g. an embedded open-weights model on a GPU box. Endpoints:
`POST /v1/chat/completions` (text only, n=1, logprobs and top_logprobs in OpenAI's shape, usage counts;
a trailing assistant message is a prefill that the answer continues), `GET /v1/models`,
`GET /v1/models/{id}` and `GET /health`. With `finetune.enable_finetuning` (as `intro serve` does)
also OpenAI's files and fine-tuning endpoints: LoRA jobs on the served model, whose fine-tuned models then
answer chat completions addressed to them.

The modules, from the wire inwards:

- `protocol`: OpenAI's chat JSON read into boundary types (and refused with `InvalidRequestError`), and
  the replies written back in OpenAI's shape;
- `server`: the HTTP server and its routes (`make_server`), one thread per connection;
- `batching`: the scheduler that merges requests from many HTTP threads into batches and turns;
- `command`: the `intro serve` command itself (`main_serve`): checks, loading the model, serving;
- `finetune`, `finetune_protocol`, `finetune_state`: the files and fine-tuning endpoints, their request
  and reply shapes, and the state directory their files and jobs live in.

Trust: `max_tokens` is bounded by the model's context; bodies must declare a sane `Content-Length`; with
an API key every endpoint but `/health` wants `Authorization: Bearer <key>`, and binding anything but
loopback requires one.
"""
