"""`transferkit serve` and `chat`: one base, several runs' adapters switched per request, an OpenAI-compatible API.

The server runs in this process on a loopback port (uvicorn in a thread) and is called over real HTTP with the
standard library, so what is tested is what a client sees: status codes, bodies, server-sent events."""

from __future__ import annotations

import contextlib
import http.client
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from served import call

from transferkit.errors import UserError

PROMPTS = ["Convert to a JSON record: Ana, 34, Lisbon, nurse", "hello world", "what is two plus two?",
           "the quick brown fox"]


def trained(tiny_config, out: Path, *overrides: str) -> Path:
    from transferkit import train

    cfg = tiny_config("train.eval_every=0", "train.save_every=0", "eval.baseline=false", "forgetting.reference=none",
                      f"output_dir={out}", *overrides)
    train(cfg)
    return out


@pytest.fixture()
def runs(tiny_config, tmp_path):
    """Two LoRA runs that answer differently (different rank, learning rate and seed), and a full fine-tune."""
    return {"json": trained(tiny_config, tmp_path / "json", "train.lr=3e-2", "train.max_steps=12"),
            "tone": trained(tiny_config, tmp_path / "tone", "method={name: lora, r: 8, alpha: 32, dropout: 0.0}",
                            "train.lr=5e-2", "seed=7", "train.max_steps=12"),
            "full": trained(tiny_config, tmp_path / "full", "method={name: full}", "train.lr=1e-2",
                            "train.max_steps=12")}


@contextlib.contextmanager
def serving(pool, *, api_key=None, limits=None, max_batch=8):
    """The app on 127.0.0.1, any free port; yields (host, port, engine)."""
    import uvicorn

    from transferkit.runtime import Runtime
    from transferkit.serve import Engine, Limits, create_app

    engine = Engine(Runtime.resolve("cpu", "fp32"), max_batch)
    app = create_app(pool, engine, limits or Limits(), api_key)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.02)
    assert server.started, "the server did not start"
    try:
        yield "127.0.0.1", server.servers[0].sockets[0].getsockname()[1], engine
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        engine.close()


def chat_answer(address, model: str, prompt: str, max_tokens: int = 12, **extra) -> str:
    status, body = call(address, "POST", "/v1/chat/completions",
                        {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
                         "temperature": 0, **extra})
    assert status == 200, body
    return body["choices"][0]["message"]["content"]


@pytest.fixture()
def pool(runs, tiny_model_dir):
    from transferkit.serve import ModelPool

    return ModelPool(str(tiny_model_dir), [(name, path) for name, path in runs.items()], "cpu")


def test_one_base_holds_every_lora_run_and_the_others_say_they_do_not_share_it(pool, tiny_model_dir):
    from peft import PeftModel

    listed = {m["id"]: m for m in pool.models()}
    assert set(listed) == {str(tiny_model_dir), "json", "tone", "full"}
    assert pool.get("json").family is pool.get("tone").family is pool.get(str(tiny_model_dir)).family
    assert isinstance(pool.get("json").family.model, PeftModel)
    assert sorted(pool.get("json").family.model.peft_config) == ["json", "tone"]
    assert listed["json"]["shares_base"] and listed[str(tiny_model_dir)]["shares_base"]
    assert not listed["full"]["shares_base"] and listed["full"]["method"] == "full"


@pytest.mark.parametrize("mixable", [True, False], ids=["rows-name-their-adapter", "one-adapter-per-batch"])
def test_concurrent_requests_for_different_adapters_get_each_adapter_s_own_answer(pool, tiny_model_dir, mixable,
                                                                                  monkeypatch):
    """No cross-talk: interleaved concurrent requests for the base, two adapters and a full fine-tune, each answer
    equal to that model's answer served alone (greedy) and to the run loaded by itself (`api.generate`); with the
    LoRA family's adapters mixed in one batch, and switched batch by batch."""
    from transferkit import generate
    from transferkit.serve import engine as engine_module

    assert pool.get("json").family.mixable
    pool.get("json").family.mixable = mixable
    batches = []  # (adapters in the batch, mixed?)
    real = engine_module.generate_batch

    def recorded(model, tokenizer, jobs, runtime, mixed=False):
        batches.append(({job.adapter_name() for job in jobs}, mixed))
        real(model, tokenizer, jobs, runtime, mixed)
    monkeypatch.setattr(engine_module, "generate_batch", recorded)
    base = str(tiny_model_dir)
    names = [base, "json", "tone", "full"]
    with serving(pool) as address:
        alone = {(name, p): chat_answer(address, name, p) for name in names for p in PROMPTS}
        assert len({tuple(alone[(name, p)] for p in PROMPTS) for name in names}) == len(names), \
            f"the models must answer differently for the test to see cross-talk: {alone}"
        batches_before = address[2].batches
        asks = [(name, p) for p in PROMPTS for name in names] * 2
        with ThreadPoolExecutor(max_workers=len(asks)) as workers:
            together = list(workers.map(lambda ask: chat_answer(address, *ask), asks))
        assert together == [alone[ask] for ask in asks]
        assert address[2].batches - batches_before < len(asks), "requests were not batched together"
        assert any(len(names) > 1 for names, _ in batches) == mixable  # several adapters in one batch
        assert all(mixed == (len(names) > 1) for names, mixed in batches)
    own = generate(PROMPTS, adapter=str(pool.get("tone").run), max_new_tokens=12, precision="fp32")
    assert own == [alone[("tone", p)] for p in PROMPTS]


def test_streamed_answers_are_the_same_text_in_openai_chunks(pool):
    with serving(pool) as address:
        expected = chat_answer(address, "json", PROMPTS[0], max_tokens=10)
        host, port = address[:2]
        connection = http.client.HTTPConnection(host, port, timeout=60)
        connection.request("POST", "/v1/chat/completions", json.dumps(
            {"model": "json", "messages": [{"role": "user", "content": PROMPTS[0]}], "max_tokens": 10,
             "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}).encode(),
            {"Content-Type": "application/json"})
        response = connection.getresponse()
        assert response.status == 200 and response.getheader("content-type").startswith("text/event-stream")
        lines = [line for line in response.read().decode().split("\n\n") if line]
        assert lines[-1] == "data: [DONE]"
        chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
        assert all(c["object"] == "chat.completion.chunk" for c in chunks)
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
        assert text == expected and len([c for c in chunks if c["choices"]]) > 3
        reasons = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
        assert reasons[-1] in ("stop", "length") and set(reasons[:-1]) == {None}
        assert chunks[-1]["usage"]["completion_tokens"] >= 1
        # /v1/completions: a raw prompt, streamed and not, the same text
        status, body = call(address, "POST", "/v1/completions",
                            {"model": "tone", "prompt": "hello", "max_tokens": 6, "temperature": 0})
        assert status == 200 and body["object"] == "text_completion"
        connection.request("POST", "/v1/completions", json.dumps(
            {"model": "tone", "prompt": "hello", "max_tokens": 6, "temperature": 0, "stream": True}).encode(),
            {"Content-Type": "application/json"})
        events = [e for e in connection.getresponse().read().decode().split("\n\n") if e and e != "data: [DONE]"]
        assert "".join(json.loads(e[6:])["choices"][0]["text"] for e in events) == body["choices"][0]["text"]


def test_max_tokens_and_stop_strings_end_each_row_on_its_own(pool):
    with serving(pool) as address:
        full = chat_answer(address, "tone", PROMPTS[1], max_tokens=12)
        status, body = call(address, "POST", "/v1/chat/completions",
                            {"model": "tone", "messages": [{"role": "user", "content": PROMPTS[1]}], "max_tokens": 3,
                             "temperature": 0})
        assert body["choices"][0]["finish_reason"] == "length" and body["usage"]["completion_tokens"] == 3
        assert full.startswith(body["choices"][0]["message"]["content"])
        seeded = [chat_answer(address, "tone", PROMPTS[1], temperature=1.0, seed=5) for _ in range(2)]
        assert seeded[0] == seeded[1], "a seeded sampled request is repeatable"
        stop = full[len(full) // 2: len(full) // 2 + 2]
        assert stop.strip(), f"no stop string to cut {full!r} with"
        cut = chat_answer(address, "tone", PROMPTS[1], max_tokens=12, stop=[stop])
        assert cut == full[:full.index(stop)]


BAD = [  # (what, request kwargs, status, words in the message)
    ("unknown model", dict(body={"model": "nope", "messages": [{"role": "user", "content": "hi"}]}), 404,
     "model 'nope' is not served"),
    ("malformed JSON", dict(raw=b'{"model": "json", "messages": ['), 400, "not valid JSON"),
    ("not an object", dict(body=["json"]), 400, "JSON object"),
    ("wrong type", dict(body={"model": "json", "messages": "hi"}), 400, "messages"),
    ("wrong number type", dict(body={"model": "json", "messages": [{"role": "user", "content": "hi"}],
                                     "max_tokens": "5"}), 400, "max_tokens"),
    ("missing field", dict(body={"model": "json"}), 400, "messages"),
    ("bad role", dict(body={"model": "json", "messages": [{"role": "robot", "content": "hi"}]}), 400, "role"),
    ("max_tokens over the limit", dict(body={"model": "json", "messages": [{"role": "user", "content": "hi"}],
                                             "max_tokens": 10_000}), 400, "over this server's limit"),
    ("prompt too long", dict(body={"model": "json", "messages": [{"role": "user", "content": "hello " * 400}]}),
     400, "prompt is"),
    ("body too large", dict(raw=b'{"model": "json", "pad": "' + b"x" * 300_000 + b'"}'), 413, "at most"),
    ("two choices", dict(body={"model": "json", "messages": [{"role": "user", "content": "hi"}], "n": 2}), 400,
     "n"),
    ("chat with nothing", dict(body={"model": "json", "messages": []}), 400, "messages"),
    ("a field not built", dict(body={"model": "json", "messages": [{"role": "user", "content": "hi"}],
                                     "logprobs": True}), 400, "logprobs: not supported"),
]


def test_bad_requests_get_the_right_4xx_and_the_server_keeps_serving(pool):
    from transferkit.serve import Limits

    limits = Limits(max_tokens=64, max_prompt_tokens=200, max_body_bytes=100_000)
    with serving(pool, limits=limits) as address:
        good = chat_answer(address, "json", PROMPTS[0])
        for what, request, status, words in BAD:
            got, body = call(address, "POST", "/v1/chat/completions", **request)
            assert got == status, (what, got, body)
            assert words in body["error"]["message"] or words == body["error"]["param"], (what, body)
            assert body["error"]["type"] == ("not_found_error" if status == 404 else "invalid_request_error")
        assert call(address, "GET", "/v1/nothing")[0] == 404
        assert call(address, "GET", "/v1/chat/completions")[0] == 405
        got, body = call(address, "POST", "/v1/classify", {"model": "json", "input": "hi"})
        assert got == 400 and "generates text" in body["error"]["message"]
        assert chat_answer(address, "json", PROMPTS[0]) == good
        assert call(address, "GET", "/health") == (200, {"status": "ok", "models": 4, "batches": 2})


def test_an_api_key_is_required_when_set_but_not_for_health(pool):
    with serving(pool, api_key="s3cret") as address:
        assert call(address, "GET", "/v1/models")[0] == 401
        assert call(address, "GET", "/v1/models", headers={"Authorization": "Bearer wrong"})[0] == 401
        status, body = call(address, "GET", "/v1/models", headers={"Authorization": "Bearer s3cret"})
        assert status == 200 and {m["id"] for m in body["data"]} >= {"json", "tone", "full"}
        assert call(address, "GET", "/health")[0] == 200


def test_classification_runs_serve_classify_with_their_own_heads(tiny_config, topics, tiny_bert_dir, tmp_path):
    from transferkit.api import load_evaluated
    from transferkit.runtime import Runtime
    from transferkit.serve import ModelPool

    settings = (f"model={tiny_bert_dir}", "method={name: lora, r: 4}", f"data.train={topics['train']}",
                f"data.validation={topics['validation']}", f"data.test={topics['test']}", "train.max_steps=20")
    first = trained(tiny_config, tmp_path / "a", *settings)
    second = trained(tiny_config, tmp_path / "b", *settings, "seed=3", "train.lr=5e-2")
    pool = ModelPool(None, [("a", first), ("b", second)], "cpu")
    assert pool.get("a").family is pool.get("b").family and str(tiny_bert_dir) not in pool.served
    texts = [json.loads(line)["text"] for line in Path(topics["test"]).read_text().splitlines()[:6]]
    with serving(pool) as address:
        answers = {}
        for name in ("a", "b"):
            status, body = call(address, "POST", "/v1/classify", {"model": name, "input": texts})
            assert status == 200, body
            answers[name] = body["data"]
        status, body = call(address, "POST", "/v1/chat/completions",
                            {"model": "a", "messages": [{"role": "user", "content": "hi"}]})
        assert status == 400 and "classifies" in body["error"]["message"]
        # concurrent: both heads in one batch (peft's adapter_names reach the heads too), each its own answer
        batches_before = address[2].batches
        with ThreadPoolExecutor(max_workers=4) as workers:
            together = list(workers.map(lambda name: call(address, "POST", "/v1/classify",
                                                          {"model": name, "input": texts})[1]["data"],
                                        ["a", "b", "a", "b"]))
        assert address[2].batches - batches_before < 4
        for name, got in zip(["a", "b", "a", "b"], together):
            assert [row["label"] for row in got] == [row["label"] for row in answers[name]]
            for row, alone in zip(got, answers[name]):
                assert row["probabilities"] == pytest.approx(alone["probabilities"], abs=1e-5)
    for name, run in (("a", first), ("b", second)):  # each equals its run loaded alone
        ev = load_evaluated(str(run), None, Runtime.resolve("cpu", "fp32"), 128)
        batch = ev.tokenizer(texts, padding=True, return_tensors="pt")
        import torch
        with torch.no_grad():
            probabilities = torch.softmax(ev.model(**batch).logits, -1)
        served = torch.tensor([[row["probabilities"][label] for label in ev.labels] for row in answers[name]])
        torch.testing.assert_close(served, probabilities, atol=1e-5, rtol=1e-4)
    assert [r["probabilities"] for r in answers["a"]] != [r["probabilities"] for r in answers["b"]]
    # chat with a classifier: each line answered with its label and probabilities
    from transferkit.api import chat

    lines, written = iter([texts[0], "/exit"]), []
    assert chat(str(first), read=lambda _: next(lines), write=written.append, precision="fp32") == 1
    ranked = sorted(answers["a"][0]["probabilities"].items(), key=lambda item: -item[1])
    assert f"{answers['a'][0]['label']}  ({ranked[0][0]} {ranked[0][1]:.1%}" in "".join(written)


def test_serve_refuses_runs_of_another_base_and_twice_given_names(runs, tiny_qwen_dir):
    from transferkit.serve import ModelPool, parse_adapter_args

    with pytest.raises(UserError, match="not on the served base"):
        ModelPool(str(tiny_qwen_dir), [("json", runs["json"])], "cpu")
    with pytest.raises(UserError, match="given twice"):
        parse_adapter_args([f"a={runs['json']}", f"a={runs['tone']}"])
    assert parse_adapter_args([str(runs["json"])]) == [("json", runs["json"])]


def test_chat_keeps_the_conversation_and_answers_as_the_server_does(runs, pool, monkeypatch, capsys):
    from transferkit.cli import main

    with serving(pool) as address:
        expected = chat_answer(address, "tone", PROMPTS[2], max_tokens=8)
    lines = iter([PROMPTS[2], "/reset", PROMPTS[2], "/exit", "never read"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    assert main(["chat", str(runs["tone"]), "--max-tokens", "8", "--precision", "fp32"]) == 0
    out = capsys.readouterr().out
    assert out.count(expected) >= 2 and "conversation forgotten" in out


def test_a_chat_template_that_refuses_the_messages_is_a_400():
    from tiny import tiny_tokenizer

    from transferkit.serve.app import chat_prompt
    from transferkit.serve.protocol import ApiError

    strict = tiny_tokenizer("{% for m in messages %}{% if m['role'] == 'assistant' and loop.first %}"
                            "{{ raise_exception('roles must alternate user/assistant') }}{% endif %}"
                            "{{ m['content'] }}{% endfor %}")
    assert chat_prompt(strict, [{"role": "user", "content": "hi"}])
    with pytest.raises(ApiError) as refused:
        chat_prompt(strict, [{"role": "assistant", "content": "hi"}])
    assert refused.value.status == 400 and "roles must alternate" in refused.value.message


def test_a_served_dora_adapter_computes_its_norm_as_training_did(tiny_config, tiny_model_dir, tmp_path):
    """peft loads a DoRA adapter with its own layer; the pool swaps in transferkit's (`methods/dora.py`), whether
    the adapter is the family's first or is added to it."""
    from peft.tuners.lora.dora import DoraLinearLayer

    from transferkit.methods.dora import LeanDoraLinearLayer
    from transferkit.serve import ModelPool

    dora = trained(tiny_config, tmp_path / "dora", "method={name: dora, r: 4}", "train.max_steps=2")
    lora = trained(tiny_config, tmp_path / "lora", "train.max_steps=2")
    for order in ([("dora", dora), ("lora", lora)], [("lora", lora), ("dora", dora)]):
        model = ModelPool(str(tiny_model_dir), order, "cpu").get("dora").family.model
        layers = [m for m in model.modules() if isinstance(m, DoraLinearLayer)]
        assert layers and all(type(m) is LeanDoraLinearLayer for m in layers)
