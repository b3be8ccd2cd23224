"""The fork inspector: one completion, its tokens shaded by entropy, and what the teacher wrote at each fork.

For a recorded completion (`omniopd.run_data.Completion`) this shows what the audit saw: every
token with a background as strong as the student's entropy H_t where it was sampled, the
audited chunks outlined and numbered, and per chunk the student's own text beside the
teacher's N continuations (the part phi compared in full, the rest greyed), with phi for each,
k = Σ phi, N_eff, π̄ and the weight π̂ = (k + α·π̄)/(N_eff + α) that the learner used.

Two renderings of the same content: `render_terminal(completion, console)` (rich) and
`render_html(completion)` (a self-contained page, see `omniopd.html_page`).
"""

from __future__ import annotations

from typing import Any

from omniopd.html_page import bar, esc, heat, num, page
from omniopd.run_data import Completion, Fork, prompt_text


def inspect_filename(step: int, completion: int) -> str:
    return f"step-{step}-completion-{completion}.html"


def chunk_of_token(completion: Completion) -> list[int | None]:
    """For each token, the index (in `completion.forks`) of the audited chunk covering it, else None."""
    owner: list[int | None] = [None] * len(completion.token_ids)
    for j, f in enumerate(completion.forks):
        for t in range(f.start, min(f.start + f.length, len(owner))):
            owner[t] = j
    return owner


def _entropy_top(completion: Completion) -> float:
    ents = sorted(completion.entropies)
    return ents[int(0.98 * (len(ents) - 1))] if ents else 0.0


def _fork_title(f: Fork) -> str:
    return f"fork {f.index + 1}: tokens {f.start}–{f.start + f.length - 1}"


# -- HTML -------------------------------------------------------------------------------------
def _tokens_html(c: Completion) -> str:
    top = _entropy_top(c)
    owner = chunk_of_token(c)
    parts, open_chunk = [], None
    for t, piece in enumerate(c.pieces):
        j = owner[t]
        if j != open_chunk:
            if open_chunk is not None:
                parts.append("</span>")
            if j is not None:
                f = c.forks[j]
                parts.append(f'<span class="chunk" id="chunk-{j + 1}" title="fork {j + 1}: π̂ {f.pihat:.3f}">'
                             f'<a class="chunk-label" href="#fork-{j + 1}">{j + 1}</a>')
            open_chunk = j
        h = c.entropies[t] if t < len(c.entropies) else 0.0
        lp = c.logprobs[t] if t < len(c.logprobs) else None
        cls = "tok special" if c.special[t] else "tok"
        tip = f"token {t}: H={h:.3f}" + (f", log p={lp:.3f}" if lp is not None else "")
        parts.append(f'<span class="{cls}" style="background:{heat(h, top)}" title="{esc(tip)}">{esc(piece)}</span>')
    if open_chunk is not None:
        parts.append("</span>")
    return f'<div class="tokens" id="tokens">{"".join(parts)}</div>'


def _fork_html(f: Fork, alpha: float | None) -> str:
    rows = [f'<tr class="student"><td>student</td><td class="mono">{esc(f.student_text)}</td><td class="num">–</td>'
            f"<td>the chunk being scored</td></tr>"]
    for i, s in enumerate(f.samples):
        if not s.stored:
            text = '<span class="rest">(sample not stored in this file)</span>'
        else:
            text = esc(s.compared) + (f'<span class="rest">{esc(s.text[len(s.compared):])}</span>' if len(s.text) > len(s.compared) else "")
        mode = f"{esc(s.teacher)}" + (f" · {esc(s.mode)}" if s.mode else "") + ("" if s.exact else " · approximate")
        rows.append(f'<tr class="teacher-sample"><td>teacher {i + 1}</td><td class="mono">{text}</td>'
                    f'<td class="num phi">{bar(s.phi)}{num(s.phi)}</td><td>{mode}</td></tr>')
    n = max(f.n_eff, 1)
    formula = "" if alpha is None else f" = ({f.k:.3f} + {alpha:g}·{f.pibar:.3f}) / ({f.n_eff} + {alpha:g})"
    return (
        f'<section class="fork" id="fork-{f.index + 1}" data-pihat="{f.pihat:.6f}">'
        f'<h3><a href="#chunk-{f.index + 1}">{esc(_fork_title(f))}</a></h3>'
        f'<div class="stats"><span>k = Σφ <b>{f.k:.3f}</b></span><span>N<sub>eff</sub> <b>{f.n_eff}</b></span>'
        f"<span>k/N <b>{f.k / n:.3f}</b></span><span>π̄ <b>{f.pibar:.3f}</b></span>"
        f'<span>π̂ {bar(f.pihat, 6)}<b class="pihat">{f.pihat:.3f}</b>{esc(formula)}</span>'
        f'<span>teacher cost <b>${f.cost_usd:.5f}</b></span></div>'
        f'<p class="sub">prefix (the student\'s text before the fork) ends: <span class="mono">…{esc(f.prefix[-160:])}</span></p>'
        f'<table class="samples"><tr><th>who</th><th>text (the part φ compared; the rest greyed)</th><th>φ</th><th>teacher</th></tr>'
        f'{"".join(rows)}</table></section>'
    )


def render_html(c: Completion, *, run_name: str = "", alpha: float | None = None, back: str | None = None) -> str:
    """A self-contained page for one completion (see the module docstring)."""
    top = _entropy_top(c)
    legend = "".join(f'<span style="background:{heat(v, top)}">H {v:.2f}</span>' for v in (0.0, top / 4, top / 2, 3 * top / 4, top))
    nav = f'<p><a href="{esc(back)}">← run report</a></p>' if back else ""
    forks = "".join(_fork_html(f, alpha) for f in c.forks) or '<p class="sub">This completion has no audited fork (shorter than one chunk, or over the batch budget).</p>'
    body = (
        f"{nav}<h1>Step {c.step} · completion {c.index}</h1>"
        f'<p class="sub">{esc(run_name)} · {len(c.token_ids)} tokens · {len(c.forks)} audited forks</p>'
        f'<h2>Prompt</h2><pre class="prompt">{esc(prompt_text(c.prompt))}</pre>'
        f'<h2>Completion</h2><p class="legend sub">token background = the student\'s entropy where it sampled it: {legend}; '
        f"outlined = an audited chunk (click its number).</p>{_tokens_html(c)}"
        f'<h2>Forks</h2><div id="forks">{forks}</div>'
    )
    return page(f"step {c.step} completion {c.index} — omniopd inspect", body)


# -- terminal -----------------------------------------------------------------------------------
def _rich_heat(value: float, top: float) -> str:
    a = 0.0 if top <= 0 else max(0.0, min(1.0, value / top))
    r, g, b = 255, int(255 - 115 * a), int(255 - 255 * a)
    return f"#{r:02x}{g:02x}{b:02x}"


def render_terminal(c: Completion, console: Any, *, alpha: float | None = None, width: int = 120) -> None:
    """Print one completion to a rich `Console` (see the module docstring)."""
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    top = _entropy_top(c)
    owner = chunk_of_token(c)
    text = Text()
    for t, piece in enumerate(c.pieces):
        h = c.entropies[t] if t < len(c.entropies) else 0.0
        style = f"black on {_rich_heat(h, top)}"
        if owner[t] is not None:
            if t == c.forks[owner[t]].start:
                text.append(f"[{owner[t] + 1}]", style="bold white on blue")
            style += " underline bold"
        if c.special[t]:
            style = "dim"
        text.append(piece, style=style)
    console.print(Panel(prompt_text(c.prompt), title="prompt", expand=False, width=width))
    console.print(Panel(text, title=f"step {c.step} · completion {c.index} · {len(c.token_ids)} tokens · "
                        f"shade = entropy (max {top:.2f}) · underlined = audited", width=width))
    for f in c.forks:
        table = Table(title=f"{_fork_title(f)}   k {f.k:.3f}   N {f.n_eff}   π̄ {f.pibar:.3f}   π̂ {f.pihat:.3f}",
                      show_lines=True, width=width, title_justify="left")
        table.add_column("who", no_wrap=True)
        table.add_column("text (φ compared the bold part)")
        table.add_column("φ", justify="right", no_wrap=True)
        table.add_column("teacher", no_wrap=True)
        table.add_row("student", Text(f.student_text, style="yellow"), "", "")
        for i, s in enumerate(f.samples):
            body = Text(s.compared, style="bold")
            body.append(s.text[len(s.compared):], style="dim")
            if not s.stored:
                body = Text("(sample not stored in this file)", style="dim")
            table.add_row(f"teacher {i + 1}", body, num(s.phi), s.teacher + ("" if s.exact else " (approx.)"))
        console.print(table)
    if not c.forks:
        console.print("no audited fork in this completion")
