"""`<compare output_dir>/report.html`: a comparison on one self-contained page.

    the advice, then the table (each method linked to its own run report), then four charts (inline SVG):
    score against train time, score against trainable parameters (log axis), forgetting against score, and the
    training loss of every method on one chart (from each run's metrics.jsonl)
"""

from __future__ import annotations

from html import escape
from pathlib import Path

from ..rundir import RunDir
from .render import STYLE, number, svg, table


def write_comparison_report(out: Path, result: dict) -> Path:
    """report.html in the comparison folder `out`, from comparison.json's content `result`."""
    target = out / "report.html"
    RunDir(out).write_text_atomic(target, render_comparison(out, result))
    return target


def budget_sentence(result: dict) -> str:
    """'steps=30 (30 optimizer steps per method)', or for minutes each method's planned and done steps."""
    budget = f"{result['budget']['kind']}={result['budget']['amount']:g}"
    if result["steps"] is not None:
        return f"{budget} ({result['steps']} optimizer steps per method)"
    done = [f"{r['method']} {r['steps']}/{r['planned_steps']}" for r in result["rows"] if "failed" not in r]
    return f"{budget} of training per method, its steps planned from its measured speed (done/planned: " \
           f"{', '.join(done) or 'none'})"


def render_comparison(out: Path, result: dict) -> str:
    rows = result["rows"]
    scored = [r for r in rows if "failed" not in r and r.get("score") is not None]
    title = f"comparison: {', '.join(r['method'] for r in rows)} — {out.name}"
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{escape(title)}</title>"
            f"<style>{STYLE}</style></head>\n<body>\n<h1>{escape(title)}</h1>\n"
            f'<p class="headline">{escape(result["advice"])}</p>\n'
            f"<p>budget {escape(budget_sentence(result))}, each method from its own defaults.</p>\n"
            + comparison_table(rows) + charts(out, scored) + "\n</body></html>\n")


def comparison_table(rows: list[dict]) -> str:
    cells = []
    for i, r in enumerate(rows):
        link = f'<a href="{escape(r["method"])}/report.html">{escape(r["method"])}</a>'
        if "failed" in r:
            cells.append([link, f'<span class="bad">failed: {escape(r["failed"])}</span>'] + [""] * 8)
            continue
        low_high = r.get("interval95")
        ci = f" ({low_high[0]:.3f}–{low_high[1]:.3f})" if low_high else ""
        marks = ", ".join(m for m, k in (("time", "pareto_time"), ("memory", "pareto_memory")) if r.get(k))
        cells.append([link, f"{escape(r['metric'])} {number(f'rows.{i}.score', r['score'])}{ci}",
                      number(f"rows.{i}.gain", r.get("gain")), number(f"rows.{i}.trainable", r["trainable"]),
                      number(f"rows.{i}.adapter_bytes", r["adapter_bytes"]), number(f"rows.{i}.train_s", r["train_s"]),
                      number(f"rows.{i}.peak_memory_bytes", r.get("peak_memory_bytes")),
                      number(f"rows.{i}.predicted_peak_bytes", r.get("predicted_peak_bytes")),
                      number(f"rows.{i}.forgetting", r.get("forgetting")), escape(marks)])
    return table(["method", "score (95 % CI)", "gain", "trainable", "adapter bytes", "train s", "peak memory",
                  "predicted peak", "forgetting", "Pareto"], cells)


def charts(out: Path, rows: list[dict]) -> str:
    if not rows:
        return ""
    from ..evaluate.plots import _pyplot

    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    panels = ((axes[0][0], "train_s", "score", "train time (s)", False),
              (axes[0][1], "trainable", "score", "trainable parameters", True),
              (axes[1][0], "score", "forgetting", "test score", False))
    for ax, x, y, label, log in panels:
        for r in rows:
            if r.get(x) is not None and r.get(y) is not None:
                ax.scatter(r[x], r[y])
                ax.annotate(r["method"], (r[x], r[y]), xytext=(4, 4), textcoords="offset points", fontsize=8)
        ax.set_xlabel(label)
        ax.set_ylabel("forgetting" if y == "forgetting" else f"test {rows[0]['metric']}")
        ax.set_xscale("log" if log else "linear")
        ax.grid(alpha=0.3)
    for r in rows:
        train = [e for e in RunDir(out / r["method"]).read_events() if e.get("event") == "train" and "loss" in e]
        axes[1][1].plot([e["step"] for e in train], [e["loss"] for e in train], label=r["method"])
    axes[1][1].set_xlabel("step")
    axes[1][1].set_ylabel("train loss")
    axes[1][1].legend(fontsize=8)
    fig.tight_layout()
    page = f"<h2>Quality against cost and forgetting; training loss</h2><figure>{svg(fig)}</figure>"
    plt.close(fig)
    return page
