"""`transferkit serve` under load: one process holding a base and its adapters, against one process per model.

    .venv/bin/python benchmarks/serve_load.py [--adapter NAME=RUN_DIR ...] [--clients 6] [--seconds 60]

Two deployments answer the same load, one after the other, on loopback only:

    shared   one `transferkit serve --model BASE --adapter A=… --adapter B=…` (one base in memory)
    naive    one `transferkit serve` per model: the base alone, and each adapter on its own copy of the base

`--clients` threads each send chat completions (greedy, `--max-tokens` tokens, prompts from the quickstart's
test split) for `--seconds`, cycling through the models so every model gets the same share; a request already
sent is waited for, none is started after the deadline, and at most `--max-requests` are sent. Printed per
deployment: requests/s, generated tokens/s, p50 / p95 latency, the servers' resident memory (peak, summed over
processes), and the ratios shared / naive; then how many answers of one deployment equal the other's for the
same (model, prompt). The shared server uses torch's default threads (one per core). The naive deployment runs
twice: with the default threads in every process (what starting N servers does: N × cores threads on the cores),
and with the cores divided between its processes (`OMP_NUM_THREADS`, at least 1 each).

Without `--adapter`, two LoRA runs of SmolLM2-135M on the quickstart task (20 steps each, rank 8 and 16) are
trained once into runs/serve-load/ and reused.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "data" / "quickstart"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def default_runs() -> list[str]:
    """Two LoRA runs of SmolLM2 on the quickstart task, trained once."""
    runs = []
    for name, rank in (("json-r8", 8), ("json-r16", 16)):
        out = ROOT / "runs" / "serve-load" / name
        if not (out / "summary.json").is_file():
            subprocess.run([sys.executable, "-m", "transferkit", "train", "--overwrite",
                            str(ROOT / "recipes" / "quickstart.yaml"), f"output_dir={out}", "train.max_steps=20",
                            "train.eval_every=0",
                            "train.save_every=0", "eval.baseline=false", "forgetting.reference=none",
                            f"method.r={rank}", f"method.alpha={2 * rank}"], check=True)
        runs.append(f"{name}={out}")
    return runs


@dataclass
class Server:
    process: subprocess.Popen
    port: int
    peak_rss_kib: int = 0

    def rss_kib(self, field_name: str = "VmRSS") -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
        return 0


def start(args: list[str], threads: int | None = None) -> Server:
    port = free_port()
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    process = subprocess.Popen([sys.executable, "-m", "transferkit", "serve", *args, "--port", str(port),
                                "--max-batch", "8"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = time.time() + 300
    while time.time() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"transferkit serve {' '.join(args)} failed:\n{process.stderr.read().decode()}")
        try:
            if request(port, "GET", "/health")[0] == 200:
                return Server(process, port)
        except OSError:
            time.sleep(0.5)
    raise SystemExit("a server did not start within 5 minutes")


def request(port: int, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    connection.request(method, path, json.dumps(body) if body is not None else None,
                       {"Content-Type": "application/json"})
    response = connection.getresponse()
    data = json.loads(response.read())
    connection.close()
    return response.status, data


@dataclass
class Load:
    latencies: list[float] = field(default_factory=list)
    tokens: int = 0
    failures: int = 0
    answers: dict = field(default_factory=dict)      # (model, prompt index) → text
    seconds: float = 0.0


def drive(route: dict[str, int], prompts: list[str], clients: int, seconds: float, max_tokens: int,
          max_requests: int) -> Load:
    """`clients` threads, each cycling through the models and prompts until the deadline."""
    load, lock = Load(), threading.Lock()
    models = list(route)
    sent = iter(range(max_requests))
    started = time.perf_counter()
    deadline = started + seconds

    def client(number: int) -> None:
        turn = number
        while time.perf_counter() < deadline:
            with lock:
                if next(sent, None) is None:
                    return
            model, index = models[turn % len(models)], (turn // len(models)) % len(prompts)
            turn += clients
            begin = time.perf_counter()
            status, body = request(route[model], "POST", "/v1/chat/completions", {
                "model": model, "messages": [{"role": "user", "content": prompts[index]}], "temperature": 0,
                "max_tokens": max_tokens})
            with lock:
                if status != 200:
                    load.failures += 1
                    continue
                load.latencies.append(time.perf_counter() - begin)
                load.tokens += body["usage"]["completion_tokens"]
                load.answers[(model, index)] = body["choices"][0]["message"]["content"]

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    load.seconds = time.perf_counter() - started
    return load


def deploy_and_drive(deployments: list[list[str]], names: list[list[str]], prompts, options,
                     threads: int | None = None) -> tuple[Load, int]:
    """Start the servers, warm each model once, drive the load; returns it and the summed peak RSS (KiB)."""
    servers = [start(args, threads) for args in deployments]
    try:
        route = {name: server.port for server, served in zip(servers, names) for name in served}
        for name, port in route.items():
            request(port, "POST", "/v1/chat/completions", {"model": name, "temperature": 0, "max_tokens": 2,
                                                           "messages": [{"role": "user", "content": "hi"}]})
        load = drive(route, prompts, options.clients, options.seconds, options.max_tokens, options.max_requests)
        return load, sum(server.rss_kib("VmHWM") for server in servers)
    finally:
        for server in servers:
            server.process.terminate()
            server.process.wait(timeout=60)


def row(name: str, load: Load, rss_kib: int) -> dict:
    latencies = sorted(load.latencies)
    return {"deployment": name, "requests": len(latencies), "failures": load.failures,
            "requests_per_s": len(latencies) / load.seconds, "tokens_per_s": load.tokens / load.seconds,
            "p50_s": statistics.median(latencies), "p95_s": latencies[max(0, round(0.95 * len(latencies)) - 1)],
            "peak_rss_mib": rss_kib / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--adapter", action="append", default=[], metavar="NAME=RUN_DIR")
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-requests", type=int, default=2000)
    options = parser.parse_args()
    adapters = options.adapter or default_runs()
    names = [a.partition("=")[0] for a in adapters]
    prompts = [json.loads(line)["prompt"] for line in (QUICKSTART / "test.jsonl").read_text().splitlines()[:24]]
    from transferkit.runtime import cpu_name

    print(f"{time.strftime('%Y-%m-%d')}, {cpu_name()}; {len(names) + 1} models ({options.model} + {', '.join(names)}), "
          f"{options.clients} clients, {options.seconds:g} s each, {options.max_tokens} tokens per answer, greedy")
    adapter_args = [arg for a in adapters for arg in ("--adapter", a)]
    shared, shared_rss = deploy_and_drive([["--model", options.model, *adapter_args]], [[options.model, *names]],
                                          prompts, options)
    processes = len(names) + 1
    split = max(1, (os.cpu_count() or 1) // processes)
    naive_args = ([["--model", options.model]] + [["--adapter", a] for a in adapters],
                  [[options.model]] + [[n] for n in names])
    rows, loads = [row("shared: 1 process", shared, shared_rss)], [shared]
    for label, threads in ((f"naive: {processes} processes", None), (f"  … {split} thread each", split)):
        naive, naive_rss = deploy_and_drive(*naive_args, prompts, options, threads)
        rows.append(row(label, naive, naive_rss))
        loads.append(naive)
    print(f"{'deployment':<24}{'requests':>9}{'failed':>7}{'req/s':>8}{'tokens/s':>10}{'p50 s':>8}{'p95 s':>8}"
          f"{'peak RSS MiB':>14}")
    for r in rows:
        print(f"{r['deployment']:<24}{r['requests']:>9}{r['failures']:>7}{r['requests_per_s']:>8.2f}"
              f"{r['tokens_per_s']:>10.1f}{r['p50_s']:>8.2f}{r['p95_s']:>8.2f}{r['peak_rss_mib']:>14.0f}")
    shared_row = rows[0]
    for r, load in zip(rows[1:], loads[1:]):
        both = set(shared.answers) & set(load.answers)
        same = sum(shared.answers[key] == load.answers[key] for key in both)
        r["equal_answers"] = [same, len(both)]
        print(f"shared / {r['deployment'].strip(' …')}: memory {shared_row['peak_rss_mib'] / r['peak_rss_mib']:.2f}×, "
              f"throughput (tokens/s) {shared_row['tokens_per_s'] / r['tokens_per_s']:.2f}×, p50 latency "
              f"{shared_row['p50_s'] / r['p50_s']:.2f}×; answers equal for {same} of {len(both)} (model, prompt) pairs")
    (ROOT / "runs" / "serve-load").mkdir(parents=True, exist_ok=True)
    (ROOT / "runs" / "serve-load" / "result.json").write_text(json.dumps({"rows": rows, "options": vars(options)},
                                                                         indent=2))


if __name__ == "__main__":
    main()
