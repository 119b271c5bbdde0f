"""Serving: one base, many runs' adapters, an OpenAI-compatible API (`transferkit serve`) and a terminal chat."""

from .app import create_app, run_server
from .chat import chat_loop
from .engine import Engine
from .pool import ModelPool, parse_adapter_args
from .protocol import Limits

__all__ = ["Engine", "Limits", "ModelPool", "chat_loop", "create_app", "parse_adapter_args", "run_server"]
