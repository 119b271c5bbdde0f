"""A run directory → one self-contained HTML page (see the package docstring for what it promises).

    render_report(run)      the page as a string: one section per question, in the order a person asks them
    write_report(path)      <run>/report.html, written atomically

    section            reads
    overview           summary.json: model, method, device, headline, baseline → tuned, gain, flags
    curves             metrics.jsonl: train loss and learning rate per step (preference data: both answers'
                       log-probabilities), validation metrics per step (SVG)
    test metrics       summary.json test (+ per class, per slice, confusion matrix), test_reliability.png
    examples           test_predictions.jsonl: the worst and the best answers beside their references
    forgetting         summary.json general / forgetting: general text before and after
    data, cost         summary.json data (sizes, duplicates, overlap), params, tokens/s, timings, peak memory
    config             config.yaml as the run recorded it
"""

from __future__ import annotations

import base64
import io
import json
import math
from html import escape
from pathlib import Path

from ..evaluate.comparison import headline_metric
from ..rundir import RunDir, event_metrics

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1100px;padding:1em 2em;color:#222}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.15em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th{background:#f6f6f6}td:first-child,th:first-child{text-align:left}.headline{font-size:1.25em;font-weight:600}
.flag{color:#a40}.good{color:#070}.bad{color:#b00}pre{background:#f7f7f7;padding:.8em;overflow:auto;font-size:12px}
.ex td{text-align:left;vertical-align:top;white-space:pre-wrap;font-family:ui-monospace,monospace;font-size:12px}
figure{margin:.5em 0}svg{max-width:100%;height:auto}
"""
EXAMPLES = 5  # worst and best answers shown


def write_report(path: str | Path) -> Path:
    """<run>/report.html for the run directory `path`; returns its path."""
    run = RunDir(path)
    target = run.path / "report.html"
    run.write_text_atomic(target, render_report(run))
    return target


def render_report(run: RunDir) -> str:
    summary = run.read_summary()
    events = run.read_events()
    sections = [overview(summary), curves(events), test_metrics(summary, run.path), examples(run),
                forgetting(summary), diagnostics(run), data_and_cost(summary), config_section(run)]
    title = f"{summary.get('method', '?')} on {summary.get('model', '?')} — {run.path.name}"
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{escape(title)}</title>"
            f"<style>{STYLE}</style></head>\n<body>\n<h1>{escape(title)}</h1>\n"
            + "\n".join(s for s in sections if s) + "\n</body></html>\n")


def number(key: str, value, digits: int = 4) -> str:
    """A value with its summary.json path, for people (rounded) and for scripts (data-value, exact)."""
    shown = f"{value:.{digits}g}" if isinstance(value, float) else escape(str(value))
    return f'<span data-key="{escape(key)}" data-value="{escape(json.dumps(value))}">{shown}</span>'


def table(header: list[str], rows: list[list[str]], css: str = "") -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f'<table class="{css}"><tr>{head}</tr>{body}</table>'


def overview(summary: dict) -> str:
    if not summary:
        return '<p class="flag">This run has not finished: no summary.json yet. Curves so far are below.</p>'
    facts = [f"model <b>{escape(str(summary.get('model')))}</b>", f"method <b>{escape(str(summary.get('method')))}</b>",
             f"task {escape(str(summary.get('schema')))}", f"{escape(str(summary.get('device')))}, "
             f"{escape(str(summary.get('precision')))}", f"{summary.get('steps')} steps"]
    parts = ["<h2>Did it work?</h2>", "<p>" + " · ".join(facts) + "</p>"]
    comparison = summary.get("comparison")
    if comparison:
        metric = comparison["metric"]
        verdict = "beats" if comparison.get("beats_baseline") else "does not beat"
        parts.append(
            f'<p class="headline">{escape(metric)}: tuned {number("comparison.tuned", comparison["tuned"])} vs best '
            f'baseline ({escape(str(comparison.get("baseline_prompt")))}) {number("comparison.baseline", comparison.get("baseline"))}'
            f' — gain <span class="{"good" if comparison.get("beats_baseline") else "bad"}">'
            f'{number("comparison.gain", comparison.get("gain"))}</span>: the tuned model {verdict} the baseline.</p>')
    else:
        test = summary.get("test") or {}
        headline = headline_metric(summary.get("schema", ""), test) if test else None
        if headline in test:
            parts.append(f'<p class="headline">test {escape(headline)}: {number("test." + headline, test[headline])}'
                         f" (no baseline measured)</p>")
    parts += [f'<p class="flag">⚑ {escape(str(flag))}</p>' for flag in summary.get("flags") or []]
    return "\n".join(parts)


def svg(fig) -> str:
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight")
    text = buffer.getvalue()
    return text[text.index("<svg"):]  # the XML prologue and doctype are not allowed inside HTML


PLOTS_PER_ROW = 5  # validation metrics per row of small charts


def curves(events: list[dict]) -> str:
    """Train loss and learning rate per step; validation metrics per step (one chart each)."""
    from ..evaluate.plots import _pyplot

    train = [e for e in events if e.get("event") == "train" and "loss" in e]
    checks = [(e["step"], event_metrics(e) or {}) for e in events if e.get("event") == "eval"]
    if not train and not checks:
        return ""
    plt = _pyplot()
    figures = []
    if train:
        fig, loss_ax = plt.subplots(figsize=(7, 3))
        loss_ax.plot([e["step"] for e in train], [e["loss"] for e in train], color="tab:blue", label="train loss")
        loss_ax.set_xlabel("step")
        loss_ax.set_ylabel("train loss")
        if any("lr" in e for e in train):
            lr_ax = loss_ax.twinx()
            lr_ax.plot([e["step"] for e in train], [e.get("lr") for e in train], color="tab:gray", ls="--")
            lr_ax.set_ylabel("learning rate (dashed)")
        figures.append(svg(fig))
        plt.close(fig)
    answers = [e for e in train if e.get("chosen_logp") is not None]
    if answers:  # preference data: DPO should widen the gap without sinking the chosen answers
        fig, ax = plt.subplots(figsize=(7, 3))
        for key, colour in (("chosen_logp", "tab:green"), ("rejected_logp", "tab:red")):
            ax.plot([e["step"] for e in answers], [e[key] for e in answers], color=colour, label=key.split("_")[0])
        ax.set_xlabel("step")
        ax.set_ylabel("answer log-probability (train)")
        ax.legend(fontsize=8)
        figures.append(svg(fig))
        plt.close(fig)
    scalar = sorted({k for _, m in checks for k, v in m.items() if isinstance(v, (int, float))
                     and k not in ("examples", "tokens")})
    if scalar:
        columns = min(len(scalar), PLOTS_PER_ROW)
        rows = math.ceil(len(scalar) / columns)
        fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.6 * rows), squeeze=False)
        for ax, key in zip(axes.flat, scalar):
            points = [(step, m[key]) for step, m in checks if key in m]
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o")
            ax.set_title(f"validation {key}", fontsize=9)
            ax.set_xlabel("step")
        for ax in list(axes.flat)[len(scalar):]:
            ax.set_visible(False)
        fig.tight_layout()
        figures.append(svg(fig))
        plt.close(fig)
    return "<h2>Training</h2>\n" + "\n".join(f"<figure>{f}</figure>" for f in figures)


def test_metrics(summary: dict, folder: Path) -> str:
    test = summary.get("test")
    if not test:
        return ""
    scalars = [[escape(k), number(f"test.{k}", v)] for k, v in test.items() if isinstance(v, (int, float))]
    best = (summary.get("comparison") or {}).get("baseline_prompt")
    baseline = (summary.get("baseline") or {}).get(best) if best else None
    parts = ["<h2>Test metrics</h2>", table(["metric", "tuned"] + ([f"baseline ({best})"] if baseline else []),
                                            _with_baseline(scalars, test, best, baseline))]
    per_class = test.get("per_class") or {}
    if per_class:
        rows = [[escape(name)] + [number(f"test.per_class.{name}.{k}", c[k], 3) for k in ("precision", "recall", "f1",
                                                                                      "support")]
                for name, c in per_class.items()]
        parts += ["<h3>Per class</h3>", table(["class", "precision", "recall", "F1", "support"], rows)]
    for name, metrics in (test.get("per_slice") or {}).items():
        rows = [[escape(k), number(f"test.per_slice.{name}.{k}", v)] for k, v in metrics.items()
                if isinstance(v, (int, float))]
        parts += [f"<h3>Slice {escape(name)}</h3>", table(["metric", "value"], rows)]
    matrix = test.get("confusion_matrix")
    if matrix:
        names = matrix["labels"]
        rows = [[f"<b>{escape(names[i])}</b>"] + [number(f"test.confusion_matrix.counts.{i}.{j}", v)
                                                   for j, v in enumerate(row)] for i, row in enumerate(matrix["counts"])]
        parts += ["<h3>Confusion matrix (rows: true class, columns: predicted)</h3>", table(["", *names], rows)]
    diagram = folder / "test_reliability.png"
    if diagram.is_file():
        parts.append(f"<h3>Reliability</h3>{png(diagram, 'reliability diagram')}")
    return "\n".join(parts)


def png(path: Path, alt: str) -> str:
    """A PNG file inlined in a figure (the page stays one file)."""
    return f'<figure><img alt="{escape(alt)}" src="data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}">' \
           f"</figure>"


def diagnostics(run: RunDir) -> str:
    """`transferkit diagnose`'s results, when the run has them: the reading, a row per layer, the figure. Numbers
    carry `diagnostics.<path in diagnostics/diagnostics.json>`."""
    found = run.diagnostics / "diagnostics.json"
    if not found.is_file():
        return ""
    result = json.loads(found.read_text())
    weights = {row["layer"]: (i, row) for i, row in enumerate(result["weights"]["by_layer"])}
    header = ["layer (0: embeddings)", "CKA base/tuned", *[f"probe {k}" for k in result.get("probes", {})],
              "block below: ‖ΔW‖/‖W‖", "median effective rank of its changed matrices"]
    rows = []
    for i, layer in enumerate(result["layers"]):
        cka = result["cka"]["by_layer"][i]
        cells = [str(layer), "undefined" if cka is None else number(f"diagnostics.cka.by_layer.{i}", cka)]
        cells += [number(f"diagnostics.probes.{k}.{i}", v[i]) for k, v in result.get("probes", {}).items()]
        j, row = weights.get(layer - 1, (None, None))  # hidden state i is the output of block i - 1
        cells += ["", ""] if row is None else [number(f"diagnostics.weights.by_layer.{j}.relative", row["relative"], 3),
                                               number(f"diagnostics.weights.by_layer.{j}.effective_rank",
                                                      row["effective_rank"], 3)]
        rows.append(cells)
    return "\n".join(["<h2>Where the network changed</h2>", f"<p>{escape(result['reading'])}</p>",
                      f"<p>{result['examples']} examples of {escape(result['source'])}, {escape(result['pooling'])} "
                      f"pooling; CKA {'debiased' if result['cka']['debiased'] else 'linear'} "
                      f"(<code>transferkit diagnose</code>).</p>", table(header, rows),
                      png(run.diagnostics / "diagnostics.png", "probes, CKA and weight change by layer")])


def _with_baseline(rows: list[list[str]], test: dict, name: str | None, scores: dict | None) -> list[list[str]]:
    """Each test metric's row with the best baseline's value beside it, where there is one."""
    if not scores:
        return rows
    keys = [k for k, v in test.items() if isinstance(v, (int, float))]
    return [row + [number(f"baseline.{name}.{key}", scores[key]) if isinstance(scores.get(key), (int, float))
                   else "–"] for row, key in zip(rows, keys)]


def examples(run: RunDir) -> str:
    """The worst and the best test answers: misses first (most confident first, for classifiers), then hits."""
    rows = run.read_predictions()
    if not rows:
        return ""
    confident = sorted(rows, key=lambda r: -(r.get("confidence") or 0.0))
    worst = [r for r in confident if r.get("match") is False][:EXAMPLES]
    best = [r for r in confident if r.get("match") is True][:EXAMPLES]

    def cells(r: dict) -> list[str]:
        given = r.get("prompt") or r.get("text") or input_at(r.get("where", ""))
        expected = r.get("reference", r.get("label", ""))
        confidence = f" ({r['confidence']:.2f})" if isinstance(r.get("confidence"), float) else ""
        return [escape(str(r.get("where", ""))), escape(str(given)), escape(str(expected)),
                escape(str(r.get("prediction", ""))) + confidence]

    header = ["where", "input", "reference", "prediction"]
    return "\n".join(["<h2>Examples</h2>", f"<h3>The worst answers ({len(worst)} of the misses)</h3>",
                      table(header, [cells(r) for r in worst], "ex"),
                      f"<h3>The best answers ({len(best)} of the hits)</h3>", table(header, [cells(r) for r in best], "ex")])


def input_at(where: str) -> str:
    """The text of the data row `path:line` (classification predictions record where, not what); "" when the
    file is gone or changed."""
    path, _, line = where.rpartition(":")
    try:
        row = json.loads(Path(path).read_text(encoding="utf-8").splitlines()[int(line) - 1])
    except (OSError, ValueError, IndexError):
        return ""
    return str(row.get("text", "")) if isinstance(row, dict) else ""


def forgetting(summary: dict) -> str:
    measured = summary.get("forgetting")
    if not measured:
        return ""
    rows = [[escape(k), number(f"forgetting.{k}", v)] for k, v in measured.items() if isinstance(v, (int, float))]
    general = (summary.get("general") or {}).get("base") or {}
    about = escape(str(general.get("text", "general text the run never trained on")))
    return "\n".join(["<h2>What did it forget?</h2>", f"<p>Measured on {about}, base and tuned model in the same "
                      "numerics.</p>", table(["", "value"], rows)])


def data_and_cost(summary: dict) -> str:
    if not summary:
        return ""
    data = summary.get("data") or {}
    splits = [[escape(name)] + [number(f"data.{name}.{k}", facts.get(k)) for k in ("examples", "sequences",
                                                                                  "duplicates", "truncated")]
              for name, facts in data.items() if name != "overlap" and isinstance(facts, dict)]
    overlap = [[escape(pair), number(f"data.overlap.{pair}.exact", o.get("exact")),
                number(f"data.overlap.{pair}.normalised", o.get("normalised"))]
               for pair, o in (data.get("overlap") or {}).items()]
    params = summary.get("params") or {}
    cost = [["trainable parameters", number("params.trainable", params.get("trainable"))],
            ["total parameters", number("params.total", params.get("total"))],
            ["training tokens", number("train_tokens", summary.get("train_tokens"))],
            ["tokens / s", number("tokens_per_s", summary.get("tokens_per_s"))],
            ["peak memory (bytes)", number("peak_memory_bytes", summary.get("peak_memory_bytes"))],
            ["wall time (s)", number("wall_time_s", summary.get("wall_time_s"))]]
    cost += [[f"time: {escape(phase)} (s)", number(f"timings_s.{phase}", seconds)]
             for phase, seconds in (summary.get("timings_s") or {}).items()]
    return "\n".join(["<h2>Data</h2>", table(["split", "examples", "sequences", "duplicates", "truncated"], splits),
                      "<h3>Overlap between splits</h3>" if overlap else "",
                      table(["splits", "exact", "after normalising"], overlap) if overlap else "",
                      "<h2>Cost</h2>", table(["", "value"], cost)])


def config_section(run: RunDir) -> str:
    if not run.config.is_file():
        return ""
    return f"<h2>Config</h2>\n<pre>{escape(run.config.read_text(encoding='utf-8'))}</pre>"
