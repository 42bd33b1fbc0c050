"""How `mixtures.validate` shows a report: a terminal table, a PNG of actual against target shares, and one
self-contained HTML page (no network: inline CSS, the chart as inline SVG, images as base64 thumbnails, every text
escaped, since the text of a mixture is whatever the web put in it)."""

from __future__ import annotations

import html

from mixtures.validate import Report, SourceStats

def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def source_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the per-source table, the same on the terminal and in the HTML page."""
    stats = report.sources.items()
    if report.kind == "pretrain":
        return (["source", "samples", "images", "text tok", "image tok", "share", "target", "max tok", "max side"],
                [[name, f"{s.samples:,}", f"{s.images:,}", f"{s.text_tokens:,}", f"{s.image_tokens:,}",
                  _pct(s.share), _pct(s.target), f"{s.max_tokens_seen:,}", f"{s.max_side_seen:,}"]
                 for name, s in stats])
    if report.kind == "sft":
        return (["subset", "rows", "images", "turns", "answer tok", "share", "target", "max side"],
                [[name, f"{s.samples:,}", f"{s.images:,}", f"{s.turns:,}", f"{s.answer_tokens:,}", _pct(s.share),
                  _pct(s.target), f"{s.max_side_seen:,}"] for name, s in stats])
    return (["subset", "rows", "images", "turns", "max side", "paper images", "paper Q/A", "paper share"],
            [[name, f"{s.samples:,}", f"{s.images:,}", f"{s.turns:,}", f"{s.max_side_seen:,}", _ref(s, "images"),
              _ref(s, "qa_pairs"), _ref_share(s)] for name, s in stats])


def _ref(stats: SourceStats, key: str) -> str:
    value = stats.reference.get(key)
    return f"{value:,}" if isinstance(value, int) else "-"


def _ref_share(stats: SourceStats) -> str:
    value = stats.reference.get("share")
    return f"{value:.2f}%" if isinstance(value, (int, float)) else "-"


def accounting_rows(report: Report) -> list[list[str]]:
    """(what, count, % of input) of a pipeline output."""
    account = report.accounting
    n = account.get("input", 0)
    pct = (lambda k: f"{100 * k / n:.1f}%") if n else (lambda k: "-")
    removed = sum(account.get("removed", {}).values())
    rows = [["input", f"{n:,}", ""], ["kept", f"{account.get('kept', 0):,}", pct(account.get("kept", 0))],
            ["removed", f"{removed:,}", pct(removed)]]
    rows += [[f"  {reason}", f"{count:,}", pct(count)] for reason, count in account.get("removed", {}).items()]
    return rows


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    line = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return [line(header), line(["-" * w for w in widths])] + [line(row) for row in rows]


def format_table(report: Report) -> str:
    """The terminal report: what was read, the table, notes and every failed check."""
    title = f"{report.kind} {report.name}".strip()
    lines = [f"{title}: {report.path} ({report.files_read} of {report.files_total} files read)"]
    if report.kind == "pipeline":
        lines += _table(["", "documents", "% input"], accounting_rows(report))
    else:
        lines += _table(*source_rows(report))
    lines += [f"note: {note}" for note in report.notes]
    lines += [f"FAILED: {failure}" for failure in report.failures] or ["all checks passed"]
    return "\n".join(lines)


def _bars(report: Report) -> tuple[list[str], list[float], list[float | None]]:
    names = list(report.sources)
    return names, [100 * (s.share or 0) for s in report.sources.values()], \
        [None if s.target is None else 100 * s.target for s in report.sources.values()]


def write_plot(report: Report, path: str) -> None:
    """Actual against target share per source as paired bars (PNG): upright for a few sources, lying down for many
    (the Cauldron's 50-odd subsets stay readable)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, actual, target = _bars(report)
    many = len(names) > 8
    fig, ax = plt.subplots(figsize=(8, 0.28 * len(names) + 1.5) if many else (6, 4))
    positions = range(len(names))
    bars = ax.barh if many else ax.bar
    spread = (lambda d: [len(names) - 1 - i + d for i in positions]) if many else (lambda d: [i + d for i in positions])
    size = {"height": 0.4} if many else {"width": 0.4}
    bars(spread(0.2 if many else -0.2), actual, label="actual", color="#3b7dd8", **size)
    bars(spread(-0.2 if many else 0.2), [t or 0 for t in target], label="target", color="#f0a030", **size)
    unit = f"% of {report.share_of.replace('_', ' ')}"
    if many:
        ax.set_yticks(spread(0), names, fontsize=8)
        ax.set_xlabel(unit)
    else:
        ax.set_xticks(list(positions), names)
        ax.set_ylabel(unit)
    ax.set_title(f"{report.kind} {report.name}: actual vs target share".strip())
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def share_svg(report: Report, width: int = 720, bar: int = 22) -> str:
    """The shares chart as inline SVG: per source an actual bar (blue) over a target bar (orange)."""
    names, actual, target = _bars(report)
    top = max([*actual, *(t or 0 for t in target), 1.0])
    label, scale = 170, (width - 170 - 130) / top
    height = len(names) * (2 * bar + 12) + 30
    parts = [f'<svg width="{width}" height="{height}" role="img" '
             f'aria-label="actual against target share">']
    for i, (name, a, t) in enumerate(zip(names, actual, target)):
        y = 10 + i * (2 * bar + 12)
        parts.append(f'<text x="{label - 8}" y="{y + bar + 4}" text-anchor="end">{html.escape(name)}</text>')
        parts.append(f'<rect x="{label}" y="{y}" width="{a * scale:.1f}" height="{bar - 2}" fill="#3b7dd8"/>'
                     f'<text x="{label + a * scale + 4:.1f}" y="{y + bar - 7}">{a:.2f}% actual</text>')
        if t is not None:
            parts.append(f'<rect x="{label}" y="{y + bar}" width="{t * scale:.1f}" height="{bar - 2}" '
                         f'fill="#f0a030"/><text x="{label + t * scale + 4:.1f}" y="{y + 2 * bar - 7}">'
                         f'{t:.2f}% target</text>')
    parts.append("</svg>")
    return "".join(parts)


CSS = """body{font-family:sans-serif;margin:24px;color:#222;max-width:1400px}
table{border-collapse:collapse;margin:8px 0 16px}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}th{background:#eef}.failed{color:#b00020}.ok{color:#16803c}
.failed.text{flex-basis:100%;max-width:none}
.sample{display:flex;flex-wrap:wrap;gap:8px;align-items:flex-start;border:1px solid #ddd;padding:8px;margin:8px 0}
.sample img{max-width:256px;max-height:256px;border:1px solid #999}.missing{width:96px;height:96px;
background:#ddd;display:flex;align-items:center;justify-content:center}
.text{white-space:pre-wrap;max-width:520px;font-size:13px;background:#fafafa;padding:4px}
.user{background:#eef6ff}.assistant{background:#effaef}svg text{font-size:13px}"""


def _html_table(header: list[str], rows: list[list[str]], table_id: str) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table id="{table_id}"><tr>{head}</tr>{body}</table>'


def _html_item(kind: str, value: str | None) -> str:
    if kind == "failed":
        return f'<div class="text failed">{html.escape(value or "")}</div>'
    if kind == "image":
        return f'<img src="{value}" alt="image">' if value else '<div class="missing">unreadable image</div>'
    return f'<div class="text {kind}">{html.escape(value or "")}</div>'


def _samples(report: Report, attribute: str, title: str, intro: str) -> str:
    parts = []
    for name, stats in report.sources.items():
        samples = getattr(stats, attribute)
        if samples:
            parts.append(f"<h3>{html.escape(name)}</h3>")
            parts += ['<div class="sample">' + "".join(_html_item(k, v) for k, v in sample) + "</div>"
                      for sample in samples]
    return f"<h2>{title}</h2><p>{intro}</p>" + "".join(parts) if parts else ""


def _gallery(report: Report) -> str:
    return (_samples(report, "flagged", "Samples that failed a check", "The first of each source, as stored.")
            + _samples(report, "gallery", "Gallery", "The first samples of each source, images and text in their "
                                                     "order."))


def render_html(report: Report) -> str:
    title = html.escape(f"{report.kind} {report.name}: {report.path}")
    status = ("<p class='failed'>" + "<br>".join(f"FAILED: {html.escape(f)}" for f in report.failures) + "</p>"
              if report.failures else "<p class='ok'>All checks passed.</p>")
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title><style>{CSS}</style></head>"
             f"<body><h1>{title}</h1><p>{report.files_read} of {report.files_total} files read.</p>{status}"]
    if report.kind == "pipeline":
        parts.append("<h2>Accounting</h2>" + _html_table(["", "documents", "% input"], accounting_rows(report),
                                                          "accounting"))
    else:
        parts.append("<h2>Shares</h2>" + _html_table(*source_rows(report), "shares"))
        if report.kind != "cauldron":
            parts.append(share_svg(report))
    if report.notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in report.notes) + "</ul>")
    parts.append(_gallery(report) + "</body></html>")
    return "".join(parts)


def write_html(report: Report, path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(render_html(report))
