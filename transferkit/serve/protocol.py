"""The wire format: OpenAI's request bodies as typed models (strict: "5" is not a number), its error body, and the
server's limits.

Every refusal is one JSON body `{"error": {"message", "type", "param", "code"}}` with its status:

    400 invalid_request_error   malformed JSON, a wrong type or value (param names the field), a prompt over
                                --max-prompt-tokens (code context_length_exceeded), max_tokens over --max-tokens,
                                a task the model does not do (chat with a classifier, classify with a decoder),
                                messages the model's chat template refuses (a turn order it does not take)
    401 authentication_error    --api-key set and the request's `Authorization: Bearer …` missing or wrong
    400 invalid_request_error   a field that would change the answer and is not built (logprobs, tools, penalties,
                                response_format, …: `UNSUPPORTED`), named instead of ignored
    404 not_found_error         an unknown `model` (code model_not_found) or path
    405 invalid_request_error   a method the path does not take
    413 invalid_request_error   a body over --max-body-kb
    500 server_error            the model failed on this batch; the server goes on
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError


@dataclass(frozen=True)
class Limits:
    """What one request may ask for."""

    max_tokens: int = 256          # generated tokens per request (and the default when a request sets none)
    max_prompt_tokens: int = 2048  # the prompt after the chat template
    max_body_bytes: int = 1 << 20  # the request body
    max_inputs: int = 64           # texts per /v1/classify request


class ApiError(Exception):
    """A refusal: its status and OpenAI's error body."""

    TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
             405: "invalid_request_error", 413: "invalid_request_error", 500: "server_error"}

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.TYPES.get(self.status, "invalid_request_error"),
                          "param": self.param, "code": self.code}}


class Request(BaseModel):
    # Fields OpenAI clients send that change nothing here (user, logprobs: false, …) are ignored.
    model_config = ConfigDict(strict=True, extra="ignore")


class TextPart(Request):
    type: Literal["text"]
    text: str


class Message(Request):
    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)


class StreamOptions(Request):
    include_usage: bool = False


# OpenAI fields that would change the answer and are not built here: refused by name, never silently ignored.
# (value: what a request may still send, e.g. OpenAI clients' `logprobs: false`)
UNSUPPORTED = {"logprobs": (None, False), "top_logprobs": (None, 0), "tools": (None, []), "tool_choice": (None, "none"),
               "functions": (None, []), "logit_bias": (None, {}), "presence_penalty": (None, 0, 0.0),
               "frequency_penalty": (None, 0, 0.0), "best_of": (None, 1), "echo": (None, False), "suffix": (None, ""),
               "response_format": (None, {"type": "text"})}


class Decoding(Request):
    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=1)                  # one choice per prompt: ask again for more
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None

    def stops(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        return tuple(s for s in stops if s)


class ChatRequest(Decoding):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)   # the newer name of max_tokens


class CompletionRequest(Decoding):
    prompt: str | list[str]
    max_tokens: int | None = Field(16, ge=1)                 # OpenAI's default for completions


class ClassifyRequest(Request):
    model: str
    input: str | list[str]


def parse(model: type[Request], body: bytes) -> Request:
    """The request body as `model`, or a 400 naming the first wrong field."""
    import json

    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the body is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object")
    for name, harmless in UNSUPPORTED.items() if issubclass(model, Decoding) else ():
        if data.get(name) not in harmless:
            raise ApiError(400, f"{name}: not supported by this server (it takes model, messages or prompt, "
                                f"max_tokens, temperature, top_p, seed, stop, stream, stream_options)", param=name)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ApiError(400, f"{where}: {first['msg']}" if where else first["msg"], param=where or None) from None
