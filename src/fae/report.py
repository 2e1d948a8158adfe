"""Loss curves and a self-contained HTML report (figures inlined as base64 PNG, tables).

Image grids and PNG writing live in ``fae.images``; this module only adds plots and the page.
"""
from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from fae.io import atomic_write


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (no display needed): every figure is drawn with it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_image(fig) -> Image.Image:
    """A matplotlib figure as an RGB PIL image (the figure is closed)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    pyplot().close(fig)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def line_plot(series: dict[str, tuple[Sequence[float], Sequence[float]]], title: str,
              xlabel: str = "step", ylabel: str = "loss", logy: bool = True) -> Image.Image:
    """One matplotlib line chart (Agg backend) of named (x, y) series, returned as a PIL image."""
    fig, ax = pyplot().subplots(figsize=(5.0, 3.2), dpi=110)
    for name, (xs, ys) in series.items():
        ys = np.asarray(ys, dtype=float)
        ax.plot(xs, ys, label=name, linewidth=1.2)
    if logy and all(np.all(np.asarray(y, dtype=float) > 0) for _, y in series.values()):
        ax.set_yscale("log")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return figure_image(fig)


def _png_base64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


@dataclass
class Report:
    """Sections of figures (PNG paths) and tables, rendered to one self-contained HTML file."""

    title: str
    intro: str = ""
    sections: list[tuple[str, str, list[Path], list[tuple[str, list[list[str]]]], bool]] = field(default_factory=list)

    def add(self, heading: str, text: str = "", figures: Sequence[Path] = (),
            tables: Sequence[tuple[str, list[list[str]]]] = (), code: bool = False) -> None:
        """A section: heading, a paragraph (``code``: shown verbatim, monospaced), PNG figures, and
        (caption, rows) tables (row 0 = header)."""
        self.sections.append((heading, text, [Path(f) for f in figures], list(tables), code))

    def render(self) -> str:
        parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>",
                 "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
                 "img{max-width:100%;border:1px solid #ddd;margin:4px}table{border-collapse:collapse;margin:8px 0}"
                 "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f3f3f3}"
                 "td:first-child,th:first-child{text-align:left}</style></head><body>",
                 f"<h1>{html.escape(self.title)}</h1><p>{html.escape(self.intro)}</p>"]
        for heading, text, figures, tables, code in self.sections:
            parts.append(f"<h2>{html.escape(heading)}</h2>")
            if text:
                tag = "pre" if code else "p"
                parts.append(f"<{tag}>{html.escape(text)}</{tag}>")
            for caption, rows in tables:
                parts.append(f"<table><caption>{html.escape(caption)}</caption>")
                for i, row in enumerate(rows):
                    tag = "th" if i == 0 else "td"
                    parts.append("<tr>" + "".join(f"<{tag}>{html.escape(str(c))}</{tag}>" for c in row) + "</tr>")
                parts.append("</table>")
            for fig in figures:
                parts.append(f"<figure><img alt='{html.escape(fig.stem)}' src='data:image/png;base64,"
                             f"{_png_base64(fig)}'><figcaption>{html.escape(fig.name)}</figcaption></figure>")
        parts.append("</body></html>")
        return "\n".join(parts)

    def write(self, path: str | Path) -> Path:
        text = self.render()
        return atomic_write(path, lambda f: f.write(text), mode="w")
