"""Self-contained HTML reports (validate's data report, evaluate's model analysis).

A report is one file the Kubeflow UI's HTML viewer renders, and a browser offline: inline CSS,
plots as PNG data URIs, no scripts, no external URLs. This module is the part every report
shares:

- `write_page` / `page`: the shell (doctype, charset, title, the one stylesheet `STYLE`),
  streaming the body to the file part by part so a long report is never held twice in memory;
- `e`: HTML escaping; `num` (plain text, for plots) and `n` (HTML, for table cells): numbers
  with "n/a" for None and NaN;
- `figure()` / `img(fig, alt)`: matplotlib figures rendered to an embedded PNG;
  `grouped_barh` and `legend_outside` for the grouped horizontal bars both reports draw.

matplotlib is imported on first use only, so importing a step stays fast. Figures are
`matplotlib.figure.Figure` objects, never pyplot's: nothing global keeps a reference, and
`img` clears the figure once rendered, so drawing hundreds of plots keeps memory flat.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Iterable, Iterator, Sequence

DPI = 90
VALUE_LABEL_SIZE = 7
TICK_LABEL_SIZE = 8

# The classes both reports use: `num` cells right-aligned, `ok`/`bad` verdicts, `muted` notes,
# `plots` rows of images and tables side by side, `section` boxes (`flagged`: failed a check).
STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222}
h1{font-size:22px;margin-bottom:4px} h2{font-size:18px;margin-top:28px} h3{font-size:15px}
table{border-collapse:collapse;margin:8px 0} td,th{border:1px solid #ddd;padding:4px 8px;
text-align:left;vertical-align:top;font-size:13px} th{background:#f5f5f5}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#137333;font-weight:600} .bad{color:#b3261e;font-weight:600}
.muted{color:#666;font-size:12px} img{max-width:100%;height:auto}
.plots img{margin:4px 12px 4px 0;vertical-align:top}
.plots table{display:inline-table;vertical-align:top;margin-right:16px}
.section{border:1px solid #ddd;border-radius:6px;padding:8px 12px;margin:12px 0}
.section.flagged{border-color:#b3261e;background:#fff6f5}
"""


def e(value) -> str:
    """`value` as HTML text (quotes escaped too: safe in attributes)."""
    return html.escape(str(value))


def num(value, spec: str = ".4f") -> str:
    """Plain text: `value` formatted with `spec` ('.4f', '.3g', '.1%'); 'n/a' for None or NaN.

    Integers print as they are unless `spec` is a percentage.
    """
    if value is None or value != value:  # NaN, of any float type
        return "n/a"
    if isinstance(value, int) and not isinstance(value, bool) and not spec.endswith("%"):
        return str(value)
    return format(value, spec)


def n(value, spec: str = ".4f") -> str:
    """HTML: `num`, with n/a muted, for table cells."""
    text = num(value, spec)
    return "<span class='muted'>n/a</span>" if text == "n/a" else e(text)


def page(title: str, body: Iterable[str]) -> Iterator[str]:
    """The page's parts: head (charset, escaped title, STYLE), each body part, closing tags."""
    yield (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{e(title)}</title>"
           f"<style>{STYLE}</style></head><body>")
    yield from body
    yield "</body></html>"


def write_page(path: str, title: str, body: Iterable[str]) -> None:
    """Write the page to `path` (UTF-8), one body part at a time, each on its own line."""
    with open(path, "w", encoding="utf-8") as handle:
        for part in page(title, body):
            handle.write(part)
            handle.write("\n")


def figure(width: float = 5.0, height: float = 4.0):
    """A new matplotlib Figure (width x height inches, constrained layout) for `img`.

    Transparent around the axes, so a plot takes the background of the box it is in.
    """
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained", facecolor="none")


def img(fig, alt: str) -> str:
    """`fig` as an <img> with an embedded PNG, then cleared (the figure is not reused).

    The PNG is quantized to a 256-colour palette: plots are flat colours and anti-aliased text,
    which stay sharp, and the file is a third or less of a full-colour PNG.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgba = Image.frombuffer("RGBA", canvas.get_width_height(), canvas.buffer_rgba(),
                            "raw", "RGBA", 0, 1)
    picture = rgba.quantize(colors=256, method=Image.Quantize.FASTOCTREE)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    fig.clear()
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="{e(alt)}" src="data:image/png;base64,{data}">'


def legend_outside(ax) -> None:
    """The legend to the right of the axes, where it never hides a bar."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=TICK_LABEL_SIZE,
              frameon=False)


def grouped_barh(ax, labels: Sequence[str],
                 series: Sequence[tuple[str, Sequence[float | None], str]],
                 spec: str = ".2f") -> None:
    """Horizontal bars: a group per label, top to bottom, a bar per (name, values, colour).

    Each bar is annotated with its value formatted with `spec`; None draws as no bar and
    reads 'n/a'. Labels and names are data, drawn as given (no mathtext: a '$' stays a '$').
    The legend goes outside the axes; x limits are the caller's.
    """
    from matplotlib.transforms import offset_copy

    beside = offset_copy(ax.transData, ax.figure, x=2, units="points")  # 2 pt right of the bar
    height = 0.8 / max(len(series), 1)
    for k, (name, values, color) in enumerate(series):
        offset = (k - (len(series) - 1) / 2) * height
        positions = [i + offset for i in range(len(labels))]
        widths = [v or 0.0 for v in values]
        ax.barh(positions, widths, height, color=color, label=name.replace("$", r"\$"))
        for y, width, value in zip(positions, widths, values, strict=True):
            # Out of the layout (measuring each label slows every plot): the caller's x
            # limits leave room for them.
            ax.text(width, y, num(value, spec), transform=beside, va="center",
                    fontsize=VALUE_LABEL_SIZE, color="#444", in_layout=False, parse_math=False)
    ax.set_yticks(list(range(len(labels))), labels, fontsize=TICK_LABEL_SIZE, parse_math=False)
    ax.invert_yaxis()
    legend_outside(ax)
