"""The `intro serve` command: check the address, load the local model, bind, and serve until Ctrl-C.

The address is checked before the model loads (which may take minutes), so a wrong flag fails at once;
every error is one line on standard error with the exit code `intro` uses (2 for bad input, 1 when the
model cannot be loaded or the port cannot be bound).
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable, Sequence

from intro.runtime.backends.requests import Backend, BackendError
from intro.runtime.serve.batching import DEFAULT_TURN_TOKENS
from intro.runtime.serve.server import ChatServer, is_loopback, make_server


def serve_forever(
    backend: Backend, host: str = "127.0.0.1", port: int = 8000, *, close_backend: bool = False
):
    """Serve `backend` until interrupted (Ctrl-C); then close the server (and the backend, if asked)."""
    _serve_until_interrupted(make_server(backend, host, port), close_backend=close_backend)


def _serve_until_interrupted(server: ChatServer, *, close_backend: bool) -> None:
    names = ", ".join(server.served_names)
    print(f"serving {names} at {server.url}  (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped", flush=True)
    finally:
        server.close(close_backend=close_backend)


def main_serve(
    source: str,
    host: str,
    port: int,
    state: str | None = None,
    *,
    api_key: str | None = None,
    names: Sequence[str] = (),
    turn_tokens: int | None = DEFAULT_TURN_TOKENS,
) -> int:
    """`intro serve MODEL --host H --port N [--state DIR] [--api-key KEY] [--name NAME]... [--turn-tokens
    N]`: load a local model (`embedded:<name>` or a directory) and serve it under `MODEL` as given and each
    `NAME`, with the files and fine-tuning endpoints keeping their state in `state` (a fresh temporary
    directory by default). Errors are one line on standard error. Returns the process exit code: 2 for a bad address
    or a non-loopback bind without a key, 1 when the model cannot be loaded or the port cannot be bound."""
    problem = _address_problem(host, port, api_key)
    if problem is not None:
        print(f"intro: error: {problem[1]}", file=sys.stderr)
        return problem[0]
    # Imported only now: torch takes seconds to load, and a wrong flag must not wait for it.
    from intro.runtime.backends.local import LocalBackend
    from intro.runtime.backends.local_model import load_local_model
    from intro.runtime.serve.finetune import enable_finetuning

    try:
        backend = LocalBackend(load_local_model(source))
    except BackendError as error:
        print(f"intro: error: {error}", file=sys.stderr)
        return 1
    server = _bind(
        lambda: make_server(
            backend,
            host,
            port,
            known_models_only=True,
            model_name=source,
            aliases=tuple(names),
            api_key=api_key,
            turn_tokens=turn_tokens,
        ),
        host,
        port,
    )
    if server is None:
        return 1
    service = enable_finetuning(server, backend.loaded, state)
    print(f"fine-tuning state in {service.state.root}", flush=True)
    _serve_until_interrupted(server, close_backend=True)
    return 0


def _address_problem(host: str, port: int, api_key: str | None) -> tuple[int, str] | None:
    """Checked before the model loads, which may take minutes: (exit code, message) or None."""
    if not 0 <= port <= 65535:
        return 2, f"--port must be between 0 and 65535, not {port}"
    if not api_key and not is_loopback(host):
        return 2, (
            f"--host {host or repr(host)} lets other machines use the model, upload files and train; "
            "give --api-key KEY (clients send it as a bearer token) or bind 127.0.0.1"
        )
    try:  # a port already taken is found now, not after loading the weights
        with socket.create_server((host, port)):
            pass
    except OSError as error:
        return 1, f"cannot listen on {host}:{port}: {error.strerror or error}"
    return None


def _bind(make: Callable[[], ChatServer], host: str, port: int) -> ChatServer | None:
    try:
        return make()
    except OSError as error:  # taken meanwhile
        print(f"intro: error: cannot listen on {host}:{port}: {error.strerror or error}", file=sys.stderr)
        return None
