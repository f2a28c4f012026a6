"""The validation report a person reads: anomalies first, then every feature at a glance.

Self-contained HTML (inline CSS and SVG, no scripts or CDNs) so it renders in the Kubeflow UI's
HTML viewer and offline. Bars compare train, eval and the baseline side by side.
"""

from __future__ import annotations

import html

COLORS = {"train": "#1f77b4", "eval": "#ff7f0e", "baseline": "#7f7f7f"}
MAX_BARS = 12

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222}
h1{font-size:22px;margin-bottom:4px} h2{font-size:18px;margin-top:28px}
table{border-collapse:collapse;margin:8px 0} td,th{border:1px solid #ddd;padding:4px 8px;
text-align:left;vertical-align:top;font-size:13px} th{background:#f5f5f5}
.ok{color:#137333;font-weight:600} .bad{color:#b3261e;font-weight:600}
.feature{border:1px solid #ddd;border-radius:6px;padding:8px 12px;margin:12px 0}
.feature.anomalous{border-color:#b3261e;background:#fff6f5}
.muted{color:#666;font-size:12px} .legend span{display:inline-block;margin-right:12px}
.swatch{display:inline-block;width:10px;height:10px;margin-right:4px}
"""


def _e(value) -> str:
    return html.escape(str(value))


def _feature_stats(stats) -> dict[str, object]:
    if stats is None or not stats.datasets:
        return {}
    return {"/".join(f.path.step) or f.name: f for f in stats.datasets[0].features}


def _common(feature):
    kind = feature.WhichOneof("stats")
    return getattr(feature, kind).common_stats if kind else None


def _distribution(feature) -> dict[str, float]:
    """Value -> share of non-missing values, for categorical (string or categorical int) stats."""
    if feature is None or feature.WhichOneof("stats") != "string_stats":
        return {}
    s = feature.string_stats
    total = s.common_stats.num_non_missing or 1
    buckets = s.rank_histogram.buckets or s.top_values
    values = {}
    for b in buckets:
        label = getattr(b, "label", None) or getattr(b, "value", "")
        count = getattr(b, "sample_count", None) or getattr(b, "frequency", 0.0)
        values[label] = count / total
    return values


def _bars_svg(series: dict[str, dict[str, float]]) -> str:
    """Grouped horizontal bars: one row per value (top values of the first series)."""
    first = next((s for s in series.values() if s), {})
    labels = sorted(first, key=first.get, reverse=True)[:MAX_BARS]
    if not labels:
        return ""
    names = [n for n, s in series.items() if s]
    bar_h, gap, label_w, width = 8, 6, 260, 260
    row_h = bar_h * len(names) + gap
    height = row_h * len(labels) + 4
    parts = [f'<svg width="{label_w + width + 60}" height="{height}" role="img">']
    for i, label in enumerate(labels):
        y = i * row_h
        text = label if len(label) <= 40 else label[:37] + "..."
        parts.append(f'<text x="{label_w - 6}" y="{y + row_h / 2 + 3}" font-size="11" '
                     f'text-anchor="end">{_e(text)}</text>')
        for j, name in enumerate(names):
            share = series[name].get(label, 0.0)
            parts.append(
                f'<rect x="{label_w}" y="{y + j * bar_h}" width="{max(share * width, 0.5):.1f}" '
                f'height="{bar_h - 1}" fill="{COLORS.get(name, "#999")}">'
                f"<title>{_e(name)} {_e(label)}: {share:.1%}</title></rect>"
            )
            parts.append(f'<text x="{label_w + share * width + 4:.1f}" y="{y + j * bar_h + 7}" '
                         f'font-size="9" fill="#555">{share:.1%}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _numeric_table(features: dict[str, object]) -> str:
    rows = []
    for split, feature in features.items():
        if feature is None or feature.WhichOneof("stats") != "num_stats":
            continue
        n = feature.num_stats
        rows.append(f"<tr><td>{_e(split)}</td><td>{n.mean:.4g}</td><td>{n.std_dev:.4g}</td>"
                    f"<td>{n.min:.4g}</td><td>{n.median:.4g}</td><td>{n.max:.4g}</td>"
                    f"<td>{n.num_zeros}</td></tr>")
    if not rows:
        return ""
    return ("<table><tr><th>split</th><th>mean</th><th>std</th><th>min</th><th>median</th>"
            "<th>max</th><th>zeros</th></tr>" + "".join(rows) + "</table>")


def _overview_row(split: str, feature) -> str:
    common = _common(feature) if feature is not None else None
    if common is None:
        return f"<tr><td>{_e(split)}</td><td colspan=4>absent</td></tr>"
    total = common.num_non_missing + common.num_missing
    missing = common.num_missing / total if total else 0.0
    unique = feature.string_stats.unique if feature.WhichOneof("stats") == "string_stats" else ""
    avg_len = (f"{feature.string_stats.avg_length:.0f}"
               if feature.WhichOneof("stats") == "string_stats" else "")
    return (f"<tr><td>{_e(split)}</td><td>{common.num_non_missing}</td><td>{missing:.1%}</td>"
            f"<td>{unique}</td><td>{avg_len}</td></tr>")


def write_report(path: str, summary: dict, stats: dict, baseline_stats, schema, config) -> None:
    per_split = {split: _feature_stats(s) for split, s in stats.items()}
    if baseline_stats is not None:
        per_split["baseline"] = _feature_stats(baseline_stats)
    names = sorted({name for features in per_split.values() for name in features})
    label = config.label.feature
    names.sort(key=lambda n: (n != label, config.role_of(n) is None, n))
    anomalous = {a["feature"] for a in summary["anomalies"]}
    noun = "anomaly" if summary["anomaly_count"] == 1 else "anomalies"
    status = (f'<span class="bad">{summary["anomaly_count"]} {noun} found</span>'
              if summary["anomalies_found"] else '<span class="ok">no anomalies</span>')
    rows = summary["rows"]
    out = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>Data validation: {_e(summary['dataset_version'])}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>Data validation: {_e(config.name)} {_e(summary['dataset_version'])}</h1>",
        f"<p>{status}. Rows: {rows.get('train', 0)} train, {rows.get('eval', 0)} eval "
        f"({rows.get('read', 0)} read). Baseline: "
        f"{_e(summary['baseline_dataset_version'] or 'none')}. Schema: "
        f"{_e(summary['schema_source'])}.</p>",
    ]
    if summary["anomalies"]:
        out.append("<h2>Anomalies</h2><table><tr><th>feature</th><th>where</th><th>what</th>"
                   "<th>details</th></tr>")
        for a in summary["anomalies"]:
            out.append(f"<tr><td><a href='#f-{_e(a['feature'])}'>{_e(a['feature'])}</a></td>"
                       f"<td>{_e(a['split'])}</td><td class='bad'>{_e(a['short'])}</td>"
                       f"<td>{_e(a['description'])}</td></tr>")
        out.append("</table>")
    measurements = summary.get("measurements") or {}
    if measurements:
        out.append("<h2>Distribution distances</h2><table><tr><th>feature</th>"
                   "<th>train vs eval (skew)</th><th>new vs baseline (drift)</th></tr>")
        for name, m in sorted(measurements.items()):
            cells = []
            for kind in ("skew", "drift"):
                if kind in m:
                    v = m[kind]
                    css = "bad" if v["value"] > v["threshold"] else "ok"
                    cells.append(f"<td class='{css}'>{v['type']} {v['value']:.3f} "
                                 f"(threshold {v['threshold']:.3f})</td>")
                else:
                    cells.append("<td class='muted'>not compared</td>")
            out.append(f"<tr><td>{_e(name)}</td>{''.join(cells)}</tr>")
        out.append("</table>")
    legend = "".join(f"<span><i class='swatch' style='background:{COLORS[s]}'></i>{s}</span>"
                     for s in per_split)
    out.append(f"<h2>Features</h2><p class='legend'>{legend}</p>")
    for name in names:
        features = {split: feats.get(name) for split, feats in per_split.items()}
        role = "label" if name == label else (config.role_of(name) or
                                              ("id" if name == config.id_feature else ""))
        css = "feature anomalous" if name in anomalous else "feature"
        out.append(f"<div class='{css}' id='f-{_e(name)}'><b>{_e(name)}</b> "
                   f"<span class='muted'>{_e(role)}</span>")
        for a in summary["anomalies"]:
            if a["feature"] == name:
                out.append(f"<div class='bad'>{_e(a['split'])}: {_e(a['description'])}</div>")
        out.append("<table><tr><th>split</th><th>present</th><th>missing</th><th>unique</th>"
                   "<th>avg length</th></tr>")
        out.extend(_overview_row(split, f) for split, f in features.items())
        out.append("</table>")
        if name not in (config.features.get("text", ())):
            out.append(_bars_svg({split: _distribution(f) for split, f in features.items()}))
        out.append(_numeric_table(features))
        out.append("</div>")
    out.append("</body></html>")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(out))
