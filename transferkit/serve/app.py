"""`transferkit serve`: an OpenAI-compatible HTTP API over a `ModelPool` (FastAPI + uvicorn).

    GET  /health                  {"status": "ok", models, batches}; no key needed (load balancers)
    GET  /v1/models               every served name: the base and each run (task, method, shares_base)
    POST /v1/chat/completions     messages → the chat template → generation; "stream": true → server-sent events
    POST /v1/completions          a raw prompt (or a list of them, not streamed) → generation
    POST /v1/classify             a classification run: text(s) → label and class probabilities

Handlers only check and translate: they read the body (at most `Limits.max_body_bytes`), validate it
(`protocol.py`), tokenize, and hand a `Job` to the `Engine`, whose worker thread answers through an asyncio
queue. Streaming follows OpenAI's chunks (`chat.completion.chunk` / `text_completion`, then `data: [DONE]`); a
client that goes away cancels its row at the next token.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from typing import AsyncIterator

from starlette.requests import Request  # a module global: FastAPI resolves the handlers' annotations here

from ..data.tokenize import encode_chat
from ..evaluate.generation import Sampling
from .engine import Delta, Done, Engine, Failed, Job
from .pool import ModelPool, Served
from .protocol import ApiError, ChatRequest, ClassifyRequest, CompletionRequest, Decoding, Limits, parse


def create_app(pool: ModelPool, engine: Engine, limits: Limits, api_key: str | None = None):
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException

    app = FastAPI(title="transferkit", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(ApiError)
    async def refused(_request, exc: ApiError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(HTTPException)
    async def http_error(_request, exc: HTTPException):  # unknown paths and methods, in the same error body
        return JSONResponse(ApiError(exc.status_code, str(exc.detail)).body(), status_code=exc.status_code)

    @app.middleware("http")
    async def authenticate(request: Request, call_next):
        if api_key and request.url.path.startswith("/v1/"):
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                error = ApiError(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'")
                return JSONResponse(error.body(), status_code=401)
        return await call_next(request)

    @app.get("/health")
    async def health():
        return {"status": "ok", "models": len(pool.served), "batches": engine.batches}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": pool.models()}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = parse(ChatRequest, await read_body(request, limits))
        served = find(pool, body.model, "causal-lm")
        prompt = chat_prompt(served.family.tokenizer, [{"role": m.role, "content": m.text()} for m in body.messages])
        job = generation_job(served, prompt, body, body.max_completion_tokens or body.max_tokens, limits)
        if body.stream:
            return StreamingResponse(chat_stream(engine, job, body), media_type="text/event-stream")
        text, done = await complete(engine, job)
        return {"id": new_id("chatcmpl"), "object": "chat.completion", "created": int(time.time()),
                "model": served.name, "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                                   "finish_reason": done.finish_reason}],
                "usage": usage(done)}

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = parse(CompletionRequest, await read_body(request, limits))
        served = find(pool, body.model, "causal-lm")
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if not prompts or (body.stream and len(prompts) > 1):
            raise ApiError(400, "prompt: give one prompt to stream, at least one otherwise", param="prompt")
        tokenizer = served.family.tokenizer
        jobs = [generation_job(served, tokenizer(p, add_special_tokens=False)["input_ids"] or
                               [tokenizer.bos_token_id or tokenizer.eos_token_id], body, body.max_tokens, limits)
                for p in prompts]
        if body.stream:
            return StreamingResponse(completion_stream(engine, jobs[0], body), media_type="text/event-stream")
        answers = await asyncio.gather(*(complete(engine, job) for job in jobs))
        return {"id": new_id("cmpl"), "object": "text_completion", "created": int(time.time()), "model": served.name,
                "choices": [{"index": i, "text": text, "finish_reason": done.finish_reason, "logprobs": None}
                            for i, (text, done) in enumerate(answers)],
                "usage": usage(*(done for _, done in answers))}

    @app.post("/v1/classify")
    async def classify(request: Request):
        body = parse(ClassifyRequest, await read_body(request, limits))
        served = find(pool, body.model, "classification")
        texts = [body.input] if isinstance(body.input, str) else body.input
        if not texts or len(texts) > limits.max_inputs:
            raise ApiError(400, f"input: give 1 to {limits.max_inputs} texts", param="input")
        _, done = await complete(engine, Job(served, None, texts=texts))
        return {"object": "list", "model": served.name,
                "data": [{"index": i, **row} for i, row in enumerate(done.result)], "usage": usage(done)}

    return app


async def read_body(request: Request, limits: Limits) -> bytes:
    """The body, refused with 413 as soon as it passes the limit (whatever Content-Length claims)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limits.max_body_bytes:
        raise ApiError(413, f"the body is {declared} bytes; this server takes at most {limits.max_body_bytes}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limits.max_body_bytes:
            raise ApiError(413, f"the body is over {limits.max_body_bytes} bytes, the most this server takes")
        chunks.append(chunk)
    return b"".join(chunks)


def chat_prompt(tokenizer, messages: list[dict]) -> list[int]:
    """The messages through the model's chat template; a template that refuses them (some raise on a turn order
    they do not take) is the request's fault: 400."""
    from jinja2 import TemplateError

    try:
        return encode_chat(tokenizer, messages, add_generation_prompt=True)
    except (TemplateError, ValueError) as exc:
        raise ApiError(400, f"messages: the model's chat template refused them ({exc})", param="messages") from None


def find(pool: ModelPool, name: str, task: str) -> Served:
    served = pool.get(name)
    if served is None:
        raise ApiError(404, f"model '{name}' is not served here; GET /v1/models lists: "
                            f"{', '.join(pool.served)}", param="model", code="model_not_found")
    if served.task != task:
        what = "classifies: POST /v1/classify" if served.task == "classification" else \
            "generates text: POST /v1/chat/completions or /v1/completions"
        raise ApiError(400, f"model '{name}' {what}", param="model")
    return served


def generation_job(served: Served, prompt: list[int], body: Decoding, max_tokens: int | None,
                   limits: Limits) -> Job:
    if len(prompt) > limits.max_prompt_tokens:
        raise ApiError(400, f"the prompt is {len(prompt)} tokens; this server takes at most "
                            f"{limits.max_prompt_tokens}", param="messages" if isinstance(body, ChatRequest) else
                       "prompt", code="context_length_exceeded")
    max_tokens = limits.max_tokens if max_tokens is None else max_tokens
    if max_tokens > limits.max_tokens:
        raise ApiError(400, f"max_tokens {max_tokens} is over this server's limit of {limits.max_tokens}",
                       param="max_tokens")
    sampling = None if body.temperature == 0 else Sampling(body.temperature, body.top_p, body.seed)
    return Job(served, None, prompt_ids=prompt, max_tokens=max_tokens, sampling=sampling, stop=body.stops())


def events(engine: Engine, job: Job) -> AsyncIterator:
    """The job's events as they come, on this event loop; leaving early cancels the job."""
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue = asyncio.Queue()
    job.sink = lambda event: loop.call_soon_threadsafe(inbox.put_nowait, event)

    async def stream():
        engine.submit(job)
        try:
            while True:
                event = await inbox.get()
                if isinstance(event, Failed):
                    raise ApiError(500, f"the model failed on this request's batch: {event.message}")
                yield event
                if isinstance(event, Done):
                    return
        finally:
            job.cancelled.set()  # a no-op once done; otherwise the client left
    return stream()


async def complete(engine: Engine, job: Job) -> tuple[str, Done]:
    parts = []
    async for event in events(engine, job):
        if isinstance(event, Delta):
            parts.append(event.text)
        else:
            return "".join(parts), event
    raise ApiError(500, "the engine stopped before answering")


def usage(*done: Done) -> dict:
    prompt, completion = sum(d.prompt_tokens for d in done), sum(d.completion_tokens for d in done)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def sse(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


async def chat_stream(engine: Engine, job: Job, body: ChatRequest) -> AsyncIterator[str]:
    head = {"id": new_id("chatcmpl"), "object": "chat.completion.chunk", "created": int(time.time()),
            "model": body.model}

    def chunk(delta: dict, reason: str | None = None) -> str:
        return sse({**head, "choices": [{"index": 0, "delta": delta, "finish_reason": reason}]})

    yield chunk({"role": "assistant", "content": ""})
    async for chunk_text in stream_events(engine, job, body, lambda text: chunk({"content": text}),
                                          lambda reason: chunk({}, reason), head):
        yield chunk_text


async def completion_stream(engine: Engine, job: Job, body: CompletionRequest) -> AsyncIterator[str]:
    head = {"id": new_id("cmpl"), "object": "text_completion", "created": int(time.time()), "model": body.model}

    def chunk(text: str, reason: str | None = None) -> str:
        return sse({**head, "choices": [{"index": 0, "text": text, "finish_reason": reason, "logprobs": None}]})

    async for chunk_text in stream_events(engine, job, body, chunk, lambda reason: chunk("", reason), head):
        yield chunk_text


async def stream_events(engine: Engine, job: Job, body: Decoding, on_text, on_done, head: dict):
    """The SSE lines of one streamed job: its deltas, the finish reason, usage if asked, then [DONE]. A failure
    after the headers went out can only be told in the stream: an error event."""
    try:
        async for event in events(engine, job):
            if isinstance(event, Delta):
                yield on_text(event.text)
            else:
                yield on_done(event.finish_reason)
                if body.stream_options is not None and body.stream_options.include_usage:
                    yield sse({**head, "choices": [], "usage": usage(event)})
    except ApiError as exc:
        yield sse(exc.body())
    yield sse("[DONE]")


def run_server(app, host: str, port: int, on_start=None) -> None:
    """uvicorn on (host, port) until Ctrl-C; `on_start(url)` once it listens."""
    import uvicorn

    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    if on_start is not None:
        original = server.startup

        async def startup(sockets=None):
            await original(sockets=sockets)
            bound = server.servers[0].sockets[0].getsockname() if server.servers else (host, port)
            on_start(f"http://{host}:{bound[1]}")
        server.startup = startup
    server.run()
