"""Keep the libraries a run uses off the console: `intro run` prints only its own lines.

transformers, huggingface_hub, peft, torch, tokenizers, tqdm and litellm each report in their own way
(progress bars, `logging` records, `warnings`). During a run their bars are switched off and their log
records and warnings go to the run's log file instead of the terminal, so nothing is hidden from a
reader who looks and nothing clutters the progress lines. Errors still reach the user: a failing
library raises, and intro reports the exception as one line of its own.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator
from typing import TextIO

# Read by the libraries when they are imported or start a bar; a fresh `intro run` process sets them
# before any of those imports.
QUIET_ENVIRONMENT = {
    "TQDM_DISABLE": "1",  # transformers' GGUF dequantisation uses tqdm directly
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "TOKENIZERS_PARALLELISM": "false",  # else tokenizers prints a fork warning from Rust, past `logging`
    "LITELLM_LOG": "ERROR",  # litellm attaches its own stderr handler at import
}
LOG_FORMAT = "%(name)s %(levelname)s: %(message)s"


class _LogFileHandler(logging.Handler):
    """Writes log records to the run's log file (an open text file owned by the run)."""

    def __init__(self, log: TextIO):
        super().__init__(logging.INFO)
        self.log = log
        self.setFormatter(logging.Formatter(LOG_FORMAT))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.log.write(self.format(record) + "\n")
            self.log.flush()
        except (ValueError, OSError):  # the log was closed by an ending run: nothing left to tell
            pass


@contextlib.contextmanager
def libraries_to_log(log: TextIO, *, in_process_models: bool) -> Iterator[None]:
    """For the duration: library bars off, library log records and Python warnings into `log`.

    transformers is configured only when the run has in-process models: importing it takes seconds.
    """
    handler = _LogFileHandler(log)
    with _environment(QUIET_ENVIRONMENT), _warnings_to(log), _root_logging_to(handler):
        if not in_process_models:
            yield
            return
        with _transformers_quiet(), _hub_bars_off():
            yield


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def _warnings_to(log: TextIO) -> Iterator[None]:
    """Python warnings (peft, torch, transformers, zarr) become one line each in the log."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:  # type: ignore[no-untyped-def]
        try:
            log.write(f"warning: {category.__name__}: {message} ({filename}:{lineno})\n")
            log.flush()
        except (ValueError, OSError):
            pass

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


@contextlib.contextmanager
def _root_logging_to(handler: logging.Handler) -> Iterator[None]:
    """Records of loggers without handlers of their own reach the log, not Python's stderr fallback."""
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)


@contextlib.contextmanager
def _transformers_quiet() -> Iterator[None]:
    """transformers' own stderr handler and bars off; its records propagate to the log instead."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    hf_logging.disable_default_handler()
    hf_logging.enable_propagation()
    try:
        yield
    finally:
        hf_logging.disable_propagation()
        hf_logging.enable_default_handler()
        if bars:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def _hub_bars_off() -> Iterator[None]:
    import huggingface_hub.utils as hub

    enabled = not hub.are_progress_bars_disabled()
    hub.disable_progress_bars()
    try:
        yield
    finally:
        if enabled:
            hub.enable_progress_bars()
