"""intro: a declarative experiment-spec compiler for LLM introspection research."""

__version__ = "0.1.0"
