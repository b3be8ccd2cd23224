"""The HTML shell the report and the fork inspector share: one inline stylesheet, escaping, colours.

Pages are single files that open from disk with no server and no network: the CSS is inline,
images are `data:` URIs, there is no script and no external font. Links between the report's
pages are relative, so a copied `report/` folder keeps working.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif; margin: 1.5rem auto;
       max-width: 78rem; padding: 0 1rem; color: #1d1d1f; background: #fff; line-height: 1.45; }
h1 { font-size: 1.5rem; margin-bottom: .2rem; } h2 { font-size: 1.15rem; margin-top: 2rem;
       border-bottom: 1px solid #ddd; padding-bottom: .2rem; } h3 { font-size: 1rem; margin: .3rem 0; }
.sub { color: #666; font-size: .9rem; }
table { border-collapse: collapse; font-size: .85rem; margin: .5rem 0; }
th, td { border: 1px solid #ddd; padding: .25rem .5rem; text-align: left; vertical-align: top; }
th { background: #f4f4f6; } td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
pre, .mono { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: .8rem; }
pre { background: #f7f7f9; padding: .6rem; overflow-x: auto; border: 1px solid #eee; }
pre.prompt, td.mono { white-space: pre-wrap; }
.plots { display: grid; grid-template-columns: repeat(auto-fill, minmax(34rem, 1fr)); gap: 1rem; }
figure { margin: 0; border: 1px solid #eee; padding: .4rem; } figure img { width: 100%; height: auto; }
figcaption { font-size: .8rem; color: #555; }
.problems { color: #8a4b00; font-size: .85rem; }
.tokens { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: .85rem; white-space: pre-wrap;
          line-height: 1.9; border: 1px solid #eee; padding: .6rem; }
.tok { border-radius: 2px; } .tok.special { color: #999; }
.chunk { outline: 2px solid #3b6fd8; outline-offset: 1px; border-radius: 2px; }
.chunk-label { font-size: .65rem; color: #fff; background: #3b6fd8; padding: 0 .2rem; border-radius: 2px;
               vertical-align: super; font-family: system-ui, sans-serif; }
.fork { border: 1px solid #d7def0; border-radius: 4px; padding: .6rem .8rem; margin: 1rem 0; }
.stats span { margin-right: 1.2rem; } .stats b { font-variant-numeric: tabular-nums; }
.bar { display: inline-block; height: .6rem; background: #3b6fd8; vertical-align: middle; margin-right: .3rem; }
.rest { color: #999; } tr.student td { background: #fffbe8; }
.legend span { display: inline-block; padding: 0 .4rem; font-size: .75rem; }
"""


def esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{esc(title)}</title><style>{CSS}</style></head>\n<body>\n{body}\n</body></html>\n")


def png_data_uri(path: str | Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def heat(value: float, top: float) -> str:
    """A background colour for an entropy: white at 0, saturated orange at `top` and above."""
    a = 0.0 if top <= 0 else max(0.0, min(1.0, value / top))
    return f"rgba(255,140,0,{0.08 + 0.72 * a:.2f})" if a > 0.01 else "transparent"


def bar(value: float | None, width_rem: float = 4.0) -> str:
    if value is None:
        return ""
    return f'<span class="bar" style="width:{max(0.0, min(1.0, value)) * width_rem:.2f}rem"></span>'


def num(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"
