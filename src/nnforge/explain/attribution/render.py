"""HTML for explanations: highlighted tokens over a passage, heatmaps over an image, and the one-page
explanation a non-technical reader can follow. Self-contained (inline styles and SVG), every text escaped."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

__all__ = ["attribution_html", "explanation_page"]

_POS, _NEG = (220, 38, 38), (37, 99, 235)  # red: pushed the prediction up; blue: pushed it down


def _colour(score: float, scale: float) -> str:
    alpha = min(1.0, abs(score) / scale) * 0.85 if scale > 0 else 0.0
    r, g, b = _POS if score >= 0 else _NEG
    return f"rgba({r},{g},{b},{alpha:.3f})"


def _tokens_html(a: Any) -> str:
    scale = max((abs(s) for s, r in zip(a.scores, a.real, strict=True) if r), default=0.0)
    parts = []
    for unit, score, real in zip(a.units, a.scores, a.real, strict=True):
        if not real and a.family == "text-classifier":
            continue  # [CLS], [SEP], padding: not part of what the reader wrote
        piece = unit[2:] if unit.startswith("##") else unit
        space = "" if unit.startswith("##") or a.family == "char-lm" else " "
        shown = html.escape(piece).replace("\n", "↵<br>")
        parts.append(f'{space}<span title="{score:+.4f}" style="background:{_colour(score, scale)};'
                     f'border-radius:3px;padding:0 1px">{shown}</span>')
    return f'<p style="line-height:1.9;font-family:serif;font-size:1.05em">{"".join(parts).strip()}</p>'


def _grid_svg(values: Sequence[float], shape: tuple[int, int], *, diverging: bool, cell: int = 22) -> str:
    h, w = shape
    scale = max((abs(v) for v in values), default=0.0)
    top = max(values, default=1.0) or 1.0
    rects = []
    for k, v in enumerate(values):
        r, c = divmod(k, w)
        if diverging:
            fill = _colour(v, scale)
        else:
            g = 255 - int(255 * max(0.0, min(1.0, v / top)))
            fill = f"rgb({g},{g},{g})"
        rects.append(f'<rect x="{c * cell}" y="{r * cell}" width="{cell}" height="{cell}" fill="{fill}">'
                     f'<title>({r}, {c}): {v:+.4f}</title></rect>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{w * cell}" height="{h * cell}" '
            f'style="border:1px solid #ccc;margin-right:12px">{"".join(rects)}</svg>')


def attribution_html(a: Any) -> str:
    """One explanation as an HTML fragment: the passage with each token tinted by its score (red pushed the
    explained class up, blue down), or the image beside its heatmap."""
    head = (f'<div class="attribution"><p><b>{html.escape(a.target_label)}</b> '
            f'(p = {a.probabilities[a.target]:.3f}) explained by {html.escape(a.method.replace("_", " "))}')
    err = a.completeness_error
    if err is not None:
        head += f"; the scores add up to the output's change within {err:.2%}"
    head += "</p>"
    if a.image_shape is not None and a.pixels is not None:
        body = (_grid_svg(a.pixels, a.image_shape, diverging=False) +
                _grid_svg(a.scores, a.image_shape, diverging=True))
        body = f"<div>{body}</div><p style='color:#555'>left: the input; right: red pixels pushed the class up</p>"
    else:
        body = _tokens_html(a)
    return head + body + "</div>"


def _bar(value: float, width: int = 160) -> str:
    filled = int(max(0.0, min(1.0, value)) * width)
    return (f'<span style="display:inline-block;width:{width}px;height:10px;background:#eee;vertical-align:middle">'
            f'<span style="display:block;width:{filled}px;height:10px;background:#555"></span></span>')


def explanation_page(a: Any, *, title: str = "Why the model answered this", typicality: dict[str, Any] | None = None,
                     neighbours: Sequence[dict[str, Any]] | None = None, attention: Sequence[float] | None = None,
                     provenance: dict[str, Any] | None = None) -> str:
    """A self-contained page for a non-technical reader: what the model saw, what it answered, what it relied
    on, how typical the input is, and which training examples are closest to it.

    ``typicality``: ``{"score", "threshold", "detector", "in_range"}`` from the run's OOD guard;
    ``neighbours``: ``[{"text" or "label", "score", "kind"}]`` (training examples that most supported or
    opposed the answer, or the nearest ones); ``attention``: one weight per unit (how much the last layer
    attended to it, averaged over heads); ``provenance``: run id, variant, method settings.
    """
    names = [str(i) for i in range(len(a.probabilities))]
    if a.target_label and a.target < len(names):
        names[a.target] = a.target_label
    answers = "".join(f"<tr><td>{html.escape(n)}</td><td>{_bar(p)} {p:.1%}</td></tr>"
                      for n, p in sorted(zip(names, a.probabilities, strict=True), key=lambda r: -r[1])[:5])
    top = ", ".join(f"<b>{html.escape(u.removeprefix('##'))}</b>" for _, u, _ in a.top(5)) or "nothing in particular"
    against = ", ".join(f"<b>{html.escape(u.removeprefix('##'))}</b>" for _, u, s in a.top(3, sign=-1) if s < 0)
    sections = [f"<h1>{html.escape(title)}</h1>",
                "<h2>1. What the model saw</h2>", attribution_html(a),
                f"<h2>2. What it answered</h2><table>{answers}</table>",
                f"<h2>3. What it relied on</h2><p>Most in favour of <b>{html.escape(a.target_label)}</b>: {top}."
                + (f" Most against: {against}." if against else "") + "</p>"]
    if attention is not None and a.family == "text-classifier":
        pairs = [(u, w) for u, w, r in zip(a.units, attention, a.real, strict=False) if r]
        ranked = sorted(pairs, key=lambda p: -p[1])[:5]
        sections.append("<p>Where its last layer looked most: " + ", ".join(
            f"{html.escape(u.removeprefix('##'))} ({w:.0%})" for u, w in ranked) +
            ". Attention shows where the model looked, not what changed its answer: the tinted words above do.</p>")
    if typicality is not None:
        verdict = ("looks like the data the model was built for" if typicality.get("in_range")
                   else "is unlike the data the model was built for: treat the answer with caution")
        sections.append(f"<h2>4. How typical the input is</h2><p>This input {verdict} "
                        f"(unusualness {typicality['score']:.3g}; inputs above {typicality['threshold']:.3g} are "
                        f"flagged; detector: {html.escape(str(typicality.get('detector', '')))}).</p>")
    if neighbours:
        items = "".join(f"<li><i>{html.escape(str(n.get('kind', '')))}</i> ({html.escape(str(n.get('label', '')))}"
                        f", influence {float(n.get('score', 0.0)):+.3g}): "
                        f"{html.escape(str(n.get('text', '')))[:300]}</li>" for n in neighbours)
        sections.append(f"<h2>5. The training examples closest to this answer</h2><ul>{items}</ul>")
    if provenance:
        facts = "; ".join(f"{html.escape(str(k))}: {html.escape(str(v))}" for k, v in provenance.items())
        sections.append(f"<p style='color:#666;font-size:0.85em'>{facts}</p>")
    style = "body{font-family:system-ui,sans-serif;max-width:820px;margin:2em auto;color:#222}td{padding:2px 8px}"
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(sections)}</body></html>")
