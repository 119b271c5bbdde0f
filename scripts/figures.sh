#!/usr/bin/env bash
# Regenerate every figure that README.md and docs/ quote (not run in CI: about 100 minutes on 2 CPU cores with
# native bf16 math, AVX512-BF16; about 4 hours on 2 AVX2-only cores, where the forgetting experiment alone is ~3 h).
# Each command prints what the docs quote, and the docs name the command beside each figure; paste the new
# output, with the date and the CPU, where it belongs. Run `bash scripts/setup.sh` first.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
echo "== README: the quickstart (table, comparison, forgetting, time per phase)"
$PY benchmarks/quickstart_phases.py
echo "== README: Performance (the fair comparison with Trainer + peft)"
$PY benchmarks/train_throughput.py
echo "== README: Performance (the lever table and the profile)"
$PY benchmarks/levers.py
echo "== docs/forgetting.md and README: the mitigation experiment (writes runs/forgetting/results.json, docs/forgetting.png)"
# on a GPU machine with many cores (as docs/forgetting.md's table was made): add --jobs 11 (about 4 minutes on an H200)
$PY experiments/forgetting.py --out runs/forgetting
cp runs/forgetting/results.json docs/data/forgetting_results.json
echo "== docs/cost.md: the calculator against measured runs (64 min on 2 cores; add --hardware h200 --precision auto
#    --out docs/data/cost_accuracy_h200.json on a GPU machine)"
$PY benchmarks/cost_accuracy.py --steps 12 --out docs/data/cost_accuracy.json
echo "== docs/cost.md: what glibc's allocator adds to a CPU peak, and a fixed mmap threshold's cost (10 min)"
$PY benchmarks/cpu_allocator.py --out docs/data/cpu_allocator.json
echo "== docs/cost.md: how much one row's measurement moves when measured again (15 min on 2 cores)"
$PY benchmarks/cost_repeatability.py --out docs/data/cost_repeatability.json
echo "== README: compare on the topics task (table and docs/compare-topics.png)"
.venv/bin/transferkit compare recipes/compare-topics.yaml --methods baseline,probe,lora,full --budget steps=30
cp runs/compare-topics/comparison.png docs/compare-topics.png
.venv/bin/transferkit compare recipes/compare-quickstart.yaml --methods baseline,lora,ia3,full --budget steps=30
cp runs/compare-quickstart/comparison.png docs/compare-quickstart.png
echo "== README: compare under a time budget (minutes=0.5 per method)"
.venv/bin/transferkit compare recipes/compare-topics.yaml output_dir=runs/compare-topics-minutes \
    --methods baseline,probe,lora,full --budget minutes=0.5
echo "== docs/defaults.md: the learning-rate sweep around each method's default (hours; resumable)"
(cd experiments && ../$PY defaults.py)
echo "== docs/recommend.md: the recommendation against every rung, measured (27 min on 2 cores; resumable)"
(cd experiments && ../$PY recommend_check.py --tasks topics austen-speech austen-novel)
echo "== docs/diagnostics.md: where LoRA and full fine-tuning changed MiniLM (reuses the recommend check's runs)"
(cd experiments && ../$PY diagnostics.py)
echo "== docs/diagnostics.md: the probe curves of both packaged models, before training"
.venv/bin/transferkit probe --model minilm-l6 --data data/austen-novel/test.jsonl --out runs/probe-minilm
.venv/bin/transferkit probe --model smollm2-135m --data data/austen-novel/test.jsonl --out runs/probe-smollm2
.venv/bin/transferkit probe --model smollm2-135m --data data/austen-novel/test.jsonl --pooling mean \
    --out runs/probe-smollm2-mean
echo "== docs/methods.md: trainable parameters of every method"
.venv/bin/transferkit methods --model smollm2-135m
.venv/bin/transferkit methods --model minilm-l6
echo "== docs/align.md and README: SFT then DPO on SmolLM2 (four runs, about an hour on 2 AVX2 cores; resumable)"
$PY experiments/dpo.py --out runs/dpo
echo "== README: Tests (count and time of the test suite)"
time $PY -m pytest -q
