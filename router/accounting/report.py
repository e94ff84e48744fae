"""``router simulate --html``: the report as one self-contained page (inline CSS and SVG, no
script, nothing fetched), to attach to a pull request or open from a CI artifact."""

from __future__ import annotations

from decimal import Decimal
from html import escape
from pathlib import Path

from router.accounting.replay import OTHER
from router.accounting.simulate import Report, Tally
from router.config import TIERS

COLOURS = {"haiku": "#4e9a6f", "sonnet": "#d08c3a", "opus": "#6a5acd", OTHER: "#9a9a9a"}
BEFORE, AFTER = "#8aa4c8", "#d0603a"

CSS = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px auto;
max-width:1100px;color:#1d1d1f;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:16px;margin:28px 0 8px}
.sub{color:#666;margin:0 0 18px}
.cards{display:flex;gap:12px;flex-wrap:wrap}
.card{border:1px solid #ddd;border-radius:8px;padding:10px 14px;min-width:140px}
.card b{display:block;font-size:20px}.card small{color:#666;font-size:12px}
.good{color:#2e7d32}.bad{color:#c62828}
table{border-collapse:collapse;width:100%}th,td{padding:5px 8px;text-align:right;
border-bottom:1px solid #eee;font-variant-numeric:tabular-nums}
th:first-child,td:first-child{text-align:left}th{font-weight:600;background:#fafafa}
tr.total td{font-weight:600;border-top:2px solid #ccc}
.charts{display:flex;gap:24px;flex-wrap:wrap}.chart{flex:1;min-width:420px}
.legend span{display:inline-block;margin-right:14px;font-size:12px}
.legend i{display:inline-block;width:10px;height:10px;margin-right:4px;border-radius:2px}
svg text{font:11px system-ui,sans-serif;fill:#444}
"""


def html_report(report: Report, ledger: str = "") -> str:
    """Return the whole page."""
    total = report.total
    saved_class = "good" if total.saved >= 0 else "bad"
    share = f"{total.saved / total.before:.1%}" if total.before else "-"
    cards = [
        ("", f"{total.requests:,}", "requests routed"),
        ("", _usd(total.before), "cost as recorded"),
        ("", _usd(total.after), "cost with the candidate"),
        (saved_class, f"{_usd(total.saved)} ({share})", "saved"),
        ("", f"{total.moved:,}", f"moved ({total.up:,} up, {total.down:,} down)"),
        ("bad" if total.down_far else "", f"{total.down_far:,}",
         "moved down more than one tier"),
    ]
    span = (f"{escape(report.as_dict()['first'] or '')} to {escape(report.as_dict()['last'] or '')}"
            if report.first else "no records")
    parts = [
        "<!doctype html><html lang=en><meta charset=utf-8>",
        f"<title>router simulate: {escape(report.candidate)}</title><style>{CSS}</style>",
        f"<h1>What <code>{escape(Path(report.candidate).name)}</code> would have done</h1>",
        f"<p class=sub>candidate {escape(report.candidate)} (sha256 "
        f"{escape(report.sha256[:12])}) · ledger {escape(ledger)} · {span}</p>",
        "<div class=cards>" + "".join(f"<div class=card><b class='{c}'>{v}</b>"
                                      f"<small>{escape(k)}</small></div>"
                                      for c, v, k in cards) + "</div>",
        "<div class=charts><div class=chart><h2>Cost by day (USD)</h2>",
        _legend([("as recorded", BEFORE), ("with the candidate", AFTER)]),
        cost_by_day_svg(report), "</div><div class=chart><h2>Tier mix</h2>",
        _legend([(t, COLOURS[t]) for t in (*TIERS, OTHER)]),
        tier_mix_svg(report), "</div></div>",
        "<h2>By rule (the candidate's)</h2>", _rule_table(report),
        "<h2>Tier moves</h2>", _moves_table(report),
    ]
    if report.far:
        parts += ["<h2>Moved down more than one tier</h2><table><tr><th>request</th>"
                  "<th>from</th><th>to</th><th>rule now</th><th>rule then</th></tr>"]
        parts += [f"<tr><td>{escape(f['request_id'])}</td><td>{escape(f['from'])}</td>"
                  f"<td>{escape(f['to'])}</td><td>{escape(f['rule'])}</td>"
                  f"<td>{escape(str(f['was_rule']))}</td></tr>" for f in report.far]
        parts.append("</table>")
    if report.not_routed or total.unpriced:
        parts.append(f"<p class=sub>{report.not_routed:,} records never reached routing (bad "
                     f"requests, the model list); {total.unpriced:,} priced on one side only, "
                     "left out of the sums.</p>")
    return "\n".join(parts) + "\n</html>\n"


def _legend(items: list[tuple[str, str]]) -> str:
    return "<div class=legend>" + "".join(
        f'<span><i style="background:{c}"></i>{escape(n)}</span>' for n, c in items) + "</div>"


def _rule_table(report: Report) -> str:
    head = ("<table><tr><th>rule</th><th>requests</th><th>moved</th><th>up</th><th>down</th>"
            "<th>down &gt;1</th><th>before</th><th>after</th><th>saved</th></tr>")
    rows = sorted(report.by_rule.items(), key=lambda kv: -kv[1].requests)
    body = "".join(_rule_row(escape(name), t) for name, t in rows)
    return head + body + _rule_row("total", report.total, "total") + "</table>"


def _rule_row(name: str, t: Tally, css: str = "") -> str:
    return (f"<tr class='{css}'><td>{name}</td><td>{t.requests:,}</td><td>{t.moved:,}</td>"
            f"<td>{t.up:,}</td><td>{t.down:,}</td><td>{t.down_far:,}</td>"
            f"<td>{_usd(t.before)}</td><td>{_usd(t.after)}</td><td>{_usd(t.saved)}</td></tr>")


def _moves_table(report: Report) -> str:
    if not report.moves:
        return "<p>None: every request stays on its tier.</p>"
    rows = "".join(f"<tr><td>{escape(a)} → {escape(b)}</td><td>{n:,}</td></tr>"
                   for (a, b), n in sorted(report.moves.items(), key=lambda kv: -kv[1]))
    return f"<table><tr><th>recorded → candidate</th><th>requests</th></tr>{rows}</table>"


def cost_by_day_svg(report: Report, width: int = 520, height: int = 260) -> str:
    """Grouped bars: each day's cost as recorded and with the candidate."""
    days = sorted(report.by_day)
    if not days:
        return "<p>No requests.</p>"
    left, bottom, top = 56, 36, 10
    plot_w, plot_h = width - left - 10, height - bottom - top
    peak = _nice(max(max(t.before, t.after) for t in report.by_day.values()))
    step = plot_w / len(days)
    bar = max(2.0, min(28.0, step * 0.38))
    out = [f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
           'role="img" aria-label="cost by day">']
    for i in range(5):
        value = peak * i / 4
        y = top + plot_h - plot_h * i / 4
        out.append(f'<line x1="{left}" x2="{width - 10}" y1="{y:.1f}" y2="{y:.1f}" '
                   'stroke="#eee"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">'
                   f"{_short_usd(value)}</text>")
    label_every = max(1, len(days) // 10)
    for i, day in enumerate(days):
        tally = report.by_day[day]
        x = left + step * i + step / 2
        for offset, value, colour in ((-bar, tally.before, BEFORE), (0.0, tally.after, AFTER)):
            h = float(value / peak) * plot_h
            out.append(f'<rect x="{x + offset:.1f}" y="{top + plot_h - h:.1f}" width="{bar:.1f}"'
                       f' height="{h:.1f}" fill="{colour}"><title>{escape(day)}: '
                       f"{_usd(value)}</title></rect>")
        if i % label_every == 0:
            out.append(f'<text x="{x:.1f}" y="{height - bottom + 16}" text-anchor="middle">'
                       f"{escape(day[5:])}</text>")
    out.append("</svg>")
    return "".join(out)


def tier_mix_svg(report: Report, width: int = 520, height: int = 260) -> str:
    """Two stacked bars: the share of requests per tier, as recorded and with the candidate,
    then the same per day below them."""
    rows = [("as recorded", report.mix_before), ("candidate", report.mix_after)]
    left, bar_h, gap = 90, 34, 18
    plot_w = width - left - 10
    out = [f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
           'role="img" aria-label="tier mix">']
    for row, (label, mix) in enumerate(rows):
        y = 10 + row * (bar_h + gap)
        total = sum(mix.values()) or 1
        x = float(left)
        out.append(f'<text x="{left - 8}" y="{y + bar_h / 2 + 4}" text-anchor="end">'
                   f"{escape(label)}</text>")
        for tier in (*TIERS, OTHER):
            count = mix.get(tier, 0)
            if not count:
                continue
            w = plot_w * count / total
            out.append(f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{bar_h}" '
                       f'fill="{COLOURS[tier]}"><title>{tier}: {count:,} '
                       f"({count / total:.0%})</title></rect>")
            if w > 34:
                out.append(f'<text x="{x + w / 2:.1f}" y="{y + bar_h / 2 + 4}" '
                           f'text-anchor="middle" style="fill:#fff">{count / total:.0%}</text>')
            x += w
    days = sorted(report.mix_by_day)
    if days:
        base, chart_h = 10 + 2 * (bar_h + gap), height - (10 + 2 * (bar_h + gap)) - 22
        step = plot_w / len(days)
        out.append(f'<text x="{left - 8}" y="{base + chart_h / 2}" text-anchor="end">'
                   "by day</text>")
        out.append(f'<text x="{left - 8}" y="{base + chart_h / 2 + 14}" text-anchor="end">'
                   "(then | now)</text>")
        for i, day in enumerate(days):
            for half, mix in enumerate(report.mix_by_day[day]):
                total = sum(mix.values()) or 1
                left_x = left + step * i + half * step * 0.45 + step * 0.05
                top_y = float(base)
                for tier in (*TIERS, OTHER):
                    h = chart_h * mix.get(tier, 0) / total
                    if h:
                        out.append(f'<rect x="{left_x:.1f}" y="{top_y:.1f}" '
                                   f'width="{step * 0.4:.1f}" height="{h:.1f}" '
                                   f'fill="{COLOURS[tier]}"/>')
                    top_y += h
    out.append("</svg>")
    return "".join(out)


def _nice(peak: Decimal) -> Decimal:
    """The axis top: the smallest 1, 2, 2.5 or 5 times a power of ten at or above ``peak``."""
    if peak <= 0:
        return Decimal(1)
    power = Decimal(10) ** (peak.adjusted())
    for step in (1, 2, Decimal("2.5"), 5, 10):
        if peak <= step * power:
            return step * power
    return 10 * power


def _usd(amount: Decimal) -> str:
    if not amount:
        return "$0"
    return f"${amount:,.2f}" if abs(amount) >= 1 else f"${amount:,.4f}"


def _short_usd(amount: Decimal) -> str:
    value = float(amount)
    if value >= 1000:
        return f"${value / 1000:g}k"
    return f"${value:g}"
