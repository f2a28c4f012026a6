"""The validation report a person reads: anomalies first, then every feature at a glance.

One self-contained HTML file (components/common/html_report.py: inline CSS, plots as embedded
PNGs, no scripts or CDNs) so it renders in the Kubeflow UI's HTML viewer and offline. Per
feature: presence and missing share per split, numeric summaries, and grouped bars comparing
the shares of its top values in train, eval and the baseline.
"""

from __future__ import annotations

from collections.abc import Iterator

from components.common.html_report import e, figure, grouped_barh, img, n, num, write_page

COLORS = {"train": "#1f77b4", "eval": "#ff7f0e", "baseline": "#7f7f7f"}
MAX_BARS = 12
MAX_LABEL = 40


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


def distribution_plot(name: str, series: dict[str, dict[str, float]]) -> str:
    """Grouped bars: one group per top value of the first split with values, a bar per split."""
    from matplotlib.ticker import PercentFormatter

    first = next((s for s in series.values() if s), {})
    values = sorted(first, key=first.get, reverse=True)[:MAX_BARS]
    if not values:
        return ""
    splits = [split for split, shares in series.items() if shares]
    fig = figure(7.0, 0.7 + (0.11 * len(splits) + 0.1) * len(values))
    ax = fig.add_subplot()
    labels = [v if len(v) <= MAX_LABEL else v[:MAX_LABEL - 3] + "..." for v in values]
    grouped_barh(ax, labels, [(split, [series[split].get(v, 0.0) for v in values],
                               COLORS.get(split, "#999")) for split in splits], spec=".1%")
    top = max(series[split].get(v, 0.0) for split in splits for v in values)
    ax.xaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_xlim(0, top * 1.18 if top > 0 else 0.01)  # room for the value labels
    shown = (f"the {len(values)} values most common in {splits[0]}"
             if len(first) > len(values) else "each value")
    ax.set_title(f"{name}: share of {shown}", fontsize=10, loc="left", parse_math=False)
    return img(fig, f"{name}: share of {shown} in {', '.join(splits)}")


def _numeric_table(features: dict[str, object]) -> str:
    rows = []
    for split, feature in features.items():
        if feature is None or feature.WhichOneof("stats") != "num_stats":
            continue
        s = feature.num_stats
        cells = "".join(f"<td class='num'>{n(v, '.4g')}</td>"
                        for v in (s.mean, s.std_dev, s.min, s.median, s.max, s.num_zeros))
        rows.append(f"<tr><td>{e(split)}</td>{cells}</tr>")
    if not rows:
        return ""
    return ("<table><tr><th>split</th><th>mean</th><th>std</th><th>min</th><th>median</th>"
            "<th>max</th><th>zeros</th></tr>" + "".join(rows) + "</table>")


def _overview_row(split: str, feature) -> str:
    common = _common(feature) if feature is not None else None
    if common is None:
        return f"<tr><td>{e(split)}</td><td colspan=4 class='muted'>absent</td></tr>"
    total = common.num_non_missing + common.num_missing
    strings = feature.string_stats if feature.WhichOneof("stats") == "string_stats" else None
    cells = (common.num_non_missing, num(common.num_missing / total if total else 0.0, ".1%"),
             strings.unique if strings else "", num(strings.avg_length, ".0f") if strings else "")
    return (f"<tr><td>{e(split)}</td>" + "".join(f"<td class='num'>{c}</td>" for c in cells)
            + "</tr>")


def _header(summary: dict, config) -> Iterator[str]:
    noun = "anomaly" if summary["anomaly_count"] == 1 else "anomalies"
    status = (f'<span class="bad">{summary["anomaly_count"]} {noun} found</span>'
              if summary["anomalies_found"] else '<span class="ok">no anomalies</span>')
    rows = summary["rows"]
    yield f"<h1>Data validation: {e(config.name)} {e(summary['dataset_version'])}</h1>"
    yield (f"<p>{status}. Rows: {rows.get('train', 0)} train, {rows.get('eval', 0)} eval "
           f"({rows.get('read', 0)} read). Baseline: "
           f"{e(summary['baseline_dataset_version'] or 'none')}. Schema: "
           f"{e(summary['schema_source'])}.</p>")


def _anomalies(anomalies: list[dict]) -> Iterator[str]:
    if not anomalies:
        return
    yield ("<h2>Anomalies</h2><table><tr><th>feature</th><th>where</th><th>what</th>"
           "<th>details</th></tr>")
    for a in anomalies:
        yield (f"<tr><td><a href='#f-{e(a['feature'])}'>{e(a['feature'])}</a></td>"
               f"<td>{e(a['split'])}</td><td class='bad'>{e(a['short'])}</td>"
               f"<td>{e(a['description'])}</td></tr>")
    yield "</table>"


def _distances(measurements: dict) -> Iterator[str]:
    if not measurements:
        return
    yield ("<h2>Distribution distances</h2><table><tr><th>feature</th>"
           "<th>train vs eval (skew)</th><th>new vs baseline (drift)</th></tr>")
    for name, m in sorted(measurements.items()):
        cells = []
        for kind in ("skew", "drift"):
            if kind in m:
                v = m[kind]
                css = "bad" if v["value"] > v["threshold"] else "ok"
                cells.append(f"<td class='{css}'>{e(v['type'])} {num(v['value'], '.3f')} "
                             f"(threshold {num(v['threshold'], '.3f')})</td>")
            else:
                cells.append("<td class='muted'>not compared</td>")
        yield f"<tr><td>{e(name)}</td>{''.join(cells)}</tr>"
    yield "</table>"


def _feature(name: str, features: dict[str, object], anomalies: list[dict], config) -> str:
    label = config.label.feature
    role = "label" if name == label else (config.role_of(name) or
                                          ("id" if name == config.id_feature else ""))
    mine = [a for a in anomalies if a["feature"] == name]
    out = [f"<div class='section{' flagged' if mine else ''}' id='f-{e(name)}'>"
           f"<b>{e(name)}</b> <span class='muted'>{e(role)}</span>"]
    out += [f"<div class='bad'>{e(a['split'])}: {e(a['description'])}</div>" for a in mine]
    out.append("<div class='plots'><table><tr><th>split</th><th>present</th><th>missing</th>"
               "<th>unique</th><th>avg length</th></tr>")
    out += [_overview_row(split, f) for split, f in features.items()]
    out.append("</table>")
    out.append(_numeric_table(features))
    if name not in config.features.get("text", ()):
        out.append(distribution_plot(name, {split: _distribution(f)
                                            for split, f in features.items()}))
    out.append("</div></div>")
    return "".join(out)


def write_report(path: str, summary: dict, stats: dict, baseline_stats, schema, config) -> None:
    per_split = {split: _feature_stats(s) for split, s in stats.items()}
    if baseline_stats is not None:
        per_split["baseline"] = _feature_stats(baseline_stats)
    names = sorted({name for features in per_split.values() for name in features})
    label = config.label.feature
    names.sort(key=lambda name: (name != label, config.role_of(name) is None, name))

    def body() -> Iterator[str]:
        yield from _header(summary, config)
        yield from _anomalies(summary["anomalies"])
        yield from _distances(summary.get("measurements") or {})
        yield "<h2>Features</h2>"
        for name in names:  # one plot at a time: written, then its figure is gone
            features = {split: feats.get(name) for split, feats in per_split.items()}
            yield _feature(name, features, summary["anomalies"], config)

    write_page(path, f"Data validation: {summary['dataset_version']}", body())
