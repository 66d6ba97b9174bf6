"""One static HTML page per job: curves, search history, heatmaps, layers and the compression summary.

Self-contained (images are embedded as data URIs, no scripts), so it opens from
the job directory or an artifact download with no server.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from pxp.spec import JobResult

REPORT_NAME = "report.html"

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;color:#222;line-height:1.4}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}img{max-width:100%}
code{font-size:.85em;background:#f6f6f6;padding:1px 4px}
"""


def _image(out_dir: Path, name: str | None, alt: str) -> str:
    if not name or not (out_dir / name).is_file():
        return ""
    data = base64.b64encode((out_dir / name).read_bytes()).decode()
    return f'<p><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></p>'


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if value is None:
        return "–"
    return str(value)


def _compression(summary: dict[str, Any] | None) -> str:
    if not summary:
        return "<p>No model was exported (export disabled).</p>"
    keys = [
        "criterion",
        "rate",
        "params_before",
        "params_after",
        "params_removed_fraction",
        "macs_before",
        "macs_after",
        "flops_removed_fraction",
        "unpruned_test_accuracy",
        "test_accuracy",
        "accuracy_drop",
        "verification_max_abs_diff",
    ]
    rows = [[k, summary[k]] for k in keys if k in summary]
    latency = summary.get("latency")
    if isinstance(latency, dict):
        rows.extend([f"latency {k}", v] for k, v in sorted(latency.items()) if not isinstance(v, dict))
        for k, v in sorted(latency.items()):
            if isinstance(v, dict):
                rows.extend([f"latency {k} {kk}", vv] for kk, vv in sorted(v.items()))
    return _table(["quantity", "value"], rows)


def write_html_report(
    out_dir: Path,
    result: JobResult,
    provenance: dict[str, Any],
    explanations: dict[str, Any] | None,
) -> Path:
    """Write ``report.html`` into ``out_dir`` from the job's result and its files there."""
    curves = _table(
        ["criterion", "split", "unpruned", "A_PR", "safe rate"],
        [[c.label, c.split, c.unpruned_accuracy, c.apr, c.safe_rate] for c in result.curves],
    )
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>pxp report: {html.escape(result.architecture)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>pxp: {html.escape(result.architecture)} compressed without retraining</h1>",
        f"<p>Chosen: <b>{html.escape(result.chosen_label)}</b> at rate <b>{result.chosen_rate:.3f}</b> "
        f"({html.escape(result.curves[0].components)}); splits {html.escape(json.dumps(result.split_sizes))}.</p>",
        "<h2>Compressed model</h2>",
        _compression(result.compression),
        "<h2>Accuracy against pruning rate</h2>",
        curves,
        _image(out_dir, result.artifacts.get("curves_png"), "pruning curves"),
    ]
    if result.search is not None:
        s = result.search
        parts += [
            "<h2>LRP composite search</h2>",
            _table(
                ["", "default", "optimised"],
                [
                    ["A_PR, search split", s.search_apr_default, s.search_apr_best],
                    ["A_PR, test split", s.test_apr_default, s.test_apr_best],
                ],
            ),
            f"<p>{s.trials_completed} trials; best composite <code>"
            f"{html.escape(json.dumps(s.best_composite.model_dump(mode='json')))}</code></p>",
            _image(out_dir, result.artifacts.get("search_history_png"), "search history"),
        ]
    if explanations is not None:
        parts += [
            "<h2>Why these components: relevance at the input</h2>",
            f"<p>No heatmaps: {html.escape(str(explanations['heatmaps_skipped']))}.</p>"
            if explanations.get("heatmaps_skipped")
            else "",
            "<p>LRP heatmaps of reference images (red: for the true class, blue: against), from the "
            "unpruned and the pruned model with the same composite. Cosine similarity of each pair: "
            + ", ".join(f"{v:.3f}" for v in explanations.get("heatmap_change", []))
            + ".</p>",
            _image(out_dir, result.artifacts.get("heatmaps_png"), "LRP heatmaps"),
            "<h2>Why these components: per layer</h2>",
            _image(out_dir, result.artifacts.get("layers_png"), "per-layer kept fraction"),
            _table(
                ["layer", "size", "kept", "kept fraction", "score median"],
                [
                    [r["layer"], r["size"], r["kept"], r["kept_fraction"], r["score_quantiles"][2]]
                    for r in explanations.get("layers", [])
                ],
            ),
        ]
    versions = provenance.get("versions", {})
    parts += [
        "<h2>Provenance</h2>",
        _table(
            ["item", "value"],
            [
                ["checkpoint sha256", provenance.get("checkpoint", {}).get("sha256")],
                ["data sha256", provenance.get("data", {}).get("sha256")],
                ["loaded data sha256", provenance.get("data", {}).get("tensor_sha256")],
                ["seed", provenance.get("seed")],
                ["device", json.dumps(provenance.get("device"))],
                *[[k, v] for k, v in sorted(versions.items())],
            ],
        ),
        "<p>Rebuild and compare: <code>pxp reproduce &lt;this directory&gt;</code>.</p>",
        "</body></html>",
    ]
    path = out_dir / REPORT_NAME
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
