"""The daily RevOps digest: a :class:`~handoff.reporting.report.DigestReport` as an email.

Everything shown is already in the report; this module only formats and charts it. The charts
are PNGs drawn by matplotlib on its Agg canvas (no pyplot, no global backend), 560 CSS pixels
wide at twice that resolution, and go into the message as inline parts that the HTML names by
``cid:``; each image's alt text carries its key numbers, so a mail client that blocks images
still reads them. The text part is written, not stripped from the HTML, with the same numbers.

The message is built once, like a client email (:func:`handoff.mail.build_message`): every
boundary derives from the Message-ID, so the same digest always has the same bytes.
"""

from __future__ import annotations

import base64
import hashlib
import struct
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from email.generator import BytesGenerator
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime
from io import BytesIO
from pathlib import Path
from typing import Any

from handoff.emails import EmailRenderer
from handoff.mail import HEADER_POLICY, OutgoingMail, _address
from handoff.reporting.report import Cohort, DigestReport, OpenFlag, TimeToMetric

TEMPLATE = "revops_digest"
CHARTS = ("cohorts", "flags", "completeness")  # in the order the email shows them
CHART_WIDTH = 560  # CSS pixels in the email
CHART_DPI = 200  # a 5.6 in wide figure at 200 dpi: 1120 pixels, sharp on a 2x screen
CHART_INCHES = (CHART_WIDTH / 100, 2.6)
SEVERITY_ORDER = {"high": 0, "medium": 1, "low": 2}
SOURCE_NAMES = {"salesforce": "Salesforce", "hubspot": "HubSpot"}

# Okabe and Ito's palette: told apart with every common colour-vision deficiency; the cohort
# lines also differ by marker, so they read in greyscale too.
BLUE, ORANGE, GREEN, SKY = "#0072B2", "#E69F00", "#009E73", "#56B4E9"
INK, MUTED, GRID = "#1f2933", "#52606d", "#d9dee3"
STYLE = {
    "font.family": "DejaVu Sans",  # shipped with matplotlib: the same glyphs on every machine
    "font.size": 10,  # 14 px in a 560 px wide email, 9 px on a phone
    "axes.titlesize": 11.5,
    "axes.titleweight": "bold",
    "axes.titlelocation": "left",
    "axes.titlecolor": INK,
    "axes.labelsize": 9.5,
    "axes.labelcolor": MUTED,
    "axes.edgecolor": "#9aa5b1",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "xtick.color": MUTED,
    "ytick.color": MUTED,
    "xtick.labelcolor": INK,
    "ytick.labelcolor": INK,
    "legend.fontsize": 9.5,
    "legend.frameon": False,
    "text.color": INK,
    "text.parse_math": False,  # a "$" in a rep's name is text, not TeX
    "figure.facecolor": "white",
    "savefig.facecolor": "white",
}


@dataclass(frozen=True)
class RenderedDigest:
    subject: str
    text: str
    html: str  # CSS inlined; the charts as <img src="cid:...">
    images: dict[str, bytes]  # PNG by content id (without the angle brackets)


def content_id(chart: str) -> str:
    """The Content-ID (and ``cid:`` URL) of one chart."""
    return f"{chart}@revops-digest"


# -- formatting ------------------------------------------------------------------------------


def number(value: float) -> str:
    """One decimal at most, none when it is zero: 2.6, 4, 15.5."""
    text = f"{value:.1f}"
    return text[:-2] if text.endswith(".0") else text


def percent(share: float | None) -> str:
    """A share (0..1) as a whole percent; 100% only when it is all, 0% only when it is none."""
    if share is None:
        return "–"
    whole = round(share * 100)
    if whole == 100 and share < 1:
        whole = 99
    elif whole == 0 and share > 0:
        whole = 1
    return f"{whole}%"


def quantity(value: float | None, unit: str) -> str:
    """A median or a target in its unit: "2.6 business hours", "4 days", "91.3%"."""
    if value is None:
        return "–"
    if unit == "%":
        return f"{number(value)}%"
    amount = number(value)
    if amount == "1" and unit.endswith("s"):
        unit = unit[:-1]
    return f"{amount} {unit}"


def target_text(metric: TimeToMetric) -> str:
    return f"{metric.comparison} {quantity(metric.target, metric.unit)}"


def meets_target(metric: TimeToMetric) -> bool | None:
    """The median against the target, or None while nothing is measured."""
    if metric.median is None:
        return None
    if metric.comparison == "<":
        return metric.median < metric.target
    return metric.median > metric.target


def day_text(moment: datetime | date) -> str:
    """A day, as "Wed 2 Dec 2026"."""
    return f"{moment:%a} {moment.day} {moment:%b %Y}"


def week_text(monday: date) -> str:
    """A signature week by its Monday: "26 Oct 2026"."""
    return f"{monday.day} {monday:%b %Y}"


def moment_text(moment: datetime) -> str:
    """A moment in UTC, as "Tue 1 Dec, 09:12" (the header names the period's year)."""
    moment = _utc(moment)
    return f"{moment:%a} {moment.day} {moment:%b}, {moment:%H:%M}"


def plural(count: int, one: str, many: str | None = None) -> str:
    return f"{count} {one if count == 1 else (many or one + 's')}"


def summary_line(report: DigestReport) -> str:
    return (
        f"{plural(len(report.new_clients), 'new client')}, "
        f"{plural(report.flags_raised_in_period, 'red flag')} raised, "
        f"{report.flags_resolved_in_period} resolved, {len(report.open_flags)} open"
    )


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def period_text(start: datetime, end: datetime) -> str:
    """The period in words: "the 24 hours from Tuesday 1 December, 07:00 to Wednesday
    2 December 2026, 07:00 UTC"."""
    start, end = _utc(start), _utc(end)
    seconds = (end - start).total_seconds()
    if seconds > 0 and seconds % 86400 == 0 and seconds > 86400:
        length = f"the {int(seconds // 86400)} days"
    elif seconds > 0 and seconds % 3600 == 0:
        length = f"the {plural(int(seconds // 3600), 'hour')}"
    else:
        length = "the period"
    first = f"{start:%A} {start.day} {start:%B}"
    if start.year != end.year:
        first += f" {start.year}"
    return (
        f"{length} from {first}, {start:%H:%M} to {end:%A} {end.day} {end:%B %Y}, {end:%H:%M} UTC"
    )


def sources_text(sources: Sequence[str]) -> str:
    names = [SOURCE_NAMES.get(s, s) for s in sources]
    if not names:
        return "no CRM"
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _shares(cohort: Cohort) -> tuple[tuple[str, float | None], ...]:
    return (
        ("first contact", cohort.first_contact_on_time),
        ("kickoff", cohort.kickoff_on_time),
        ("first value", cohort.first_value_on_time),
    )


def sorted_flags(flags: Iterable[OpenFlag]) -> list[OpenFlag]:
    """High severity first, then the oldest."""
    return sorted(
        flags, key=lambda f: (SEVERITY_ORDER.get(f.severity, 9), _utc(f.raised_at), f.account)
    )


def _flag_rules(report: DigestReport) -> list[tuple[str, int]]:
    """Open flags by rule (title, count), most first."""
    titles = {flag.code: flag.title for flag in report.open_flags}
    rows = [
        (titles.get(code, code.replace("_", " ").capitalize()), count)
        for code, count in report.flag_counts.items()
        if count
    ]
    return sorted(rows, key=lambda row: (-row[1], row[0]))


def _reps(report: DigestReport):
    """Reps, the least complete handoff documents first."""
    return sorted(report.reps, key=lambda r: (r.complete_share, r.fields_share, r.rep))


def _alt_texts(report: DigestReport) -> dict[str, str]:
    weeks = "; ".join(
        f"week of {week_text(c.week)}: "
        + ", ".join(f"{name} {percent(share)}" for name, share in _shares(c))
        for c in sorted(report.cohorts, key=lambda c: c.week)
    )
    rules = ", ".join(f"{title} {count}" for title, count in _flag_rules(report))
    reps = ", ".join(
        f"{r.rep} {percent(r.complete_share)} of {plural(r.deals, 'deal')}" for r in _reps(report)
    )
    return {
        "cohorts": "Share of deals on target by signature week: "
        + (weeks + "." if weeks else "no data yet."),
        "flags": "Open red flags by rule: " + (rules + "." if rules else "none."),
        "completeness": "Complete handoff documents by rep, lowest first: "
        + (reps + "." if reps else "no data yet."),
    }


CHART_TITLES = {
    "cohorts": "Deals on target by signature week",
    "flags": "Open red flags by rule",
    "completeness": "Complete handoff documents by rep",
}


def template_values(report: DigestReport, images: dict[str, bytes]) -> dict[str, Any]:
    """What the templates see: the report's facts, formatted; nothing else."""
    alts = _alt_texts(report)
    metrics = []
    for metric in report.time_to:
        met = meets_target(metric)
        metrics.append(
            {
                "label": metric.label,
                "median": quantity(metric.median, metric.unit),
                "target": target_text(metric),
                "share": percent(metric.on_target_share),
                "measured": metric.measured,
                "waiting": metric.waiting,
                "met": met,
                "status": {True: "✓ on target", False: "✗ off target", None: "no data yet"}[met],
            }
        )
    charts = []
    for name in CHARTS:
        width, height = png_size(images[name])
        charts.append(
            {
                "name": name,
                "cid": content_id(name),
                "title": CHART_TITLES[name],
                "alt": alts[name],
                "height": round(CHART_WIDTH * height / width),
            }
        )
    end = _utc(report.period_end)
    return {
        "company": report.company,
        "period": period_text(report.period_start, report.period_end),
        "day": day_text(end),
        "sources": sources_text(report.sources),
        "summary": summary_line(report),
        "new_count": len(report.new_clients),
        "open_count": len(report.open_flags),
        "in_onboarding": plural(report.clients_in_onboarding, "client"),
        "new_clients": [
            {
                "account": c.account,
                "deal": c.deal,
                "source": SOURCE_NAMES.get(c.source, c.source),
                "rep": c.rep,
                "csm": c.csm,
                "won": moment_text(c.won_at),
            }
            for c in sorted(report.new_clients, key=lambda c: (_utc(c.won_at), c.account))
        ],
        "open_flags": [
            {
                "account": f.account,
                "title": f.title,
                "severity": f.severity,
                "high": f.severity == "high",
                "reason": f.reason,
                "owner": f.owner,
                "raised": moment_text(f.raised_at),
                "day": f.day,
                "source": SOURCE_NAMES.get(f.source, f.source),
            }
            for f in sorted_flags(report.open_flags)
        ],
        "flag_rules": [{"title": t, "count": n} for t, n in _flag_rules(report)],
        "metrics": metrics,
        "charts": charts,
        "cohorts": [
            {
                "week": week_text(c.week),
                "deals": c.deals,
                "first_contact": percent(c.first_contact_on_time),
                "kickoff": percent(c.kickoff_on_time),
                "first_value": percent(c.first_value_on_time),
                "milestones": percent(c.milestone_completion),
                "flags_raised": c.flags_raised,
                "flags_open": c.flags_open,
                "left": c.left,
            }
            for c in sorted(report.cohorts, key=lambda c: c.week)
        ],
        "reps": [
            {
                "rep": r.rep,
                "deals": r.deals,
                "complete": percent(r.complete_share),
                "fields": percent(r.fields_share),
            }
            for r in _reps(report)
        ],
    }


# -- charts ----------------------------------------------------------------------------------


def charts(report: DigestReport) -> dict[str, bytes]:
    """The digest's charts as PNGs by name: "cohorts", "flags", "completeness".

    Drawn on matplotlib's Agg canvas without pyplot (no global backend or figure state), with
    the styling in a local rc context and matplotlib's own font; the PNGs carry no software or
    date metadata, so the same report always gives the same bytes.
    """
    import matplotlib

    with matplotlib.rc_context(STYLE):
        return {
            "cohorts": _png(_cohort_chart(report)),
            "flags": _png(_flag_chart(report)),
            "completeness": _png(_completeness_chart(report)),
        }


def _figure(height: float = CHART_INCHES[1]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(CHART_INCHES[0], height), dpi=CHART_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _png(figure) -> bytes:
    """The figure as an 8-bit palette PNG: flat colours and anti-aliased text need far fewer
    than 128 shades, and the file is a third of matplotlib's RGBA one. Pillow (matplotlib's own
    dependency) writes no text chunks, so the bytes depend on the drawing only."""
    import numpy as np
    from PIL import Image

    figure.canvas.draw()
    pixels = Image.fromarray(np.asarray(figure.canvas.buffer_rgba())).convert("RGB")
    palette = pixels.quantize(colors=128, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    buffer = BytesIO()
    palette.save(buffer, format="png", optimize=True)
    return buffer.getvalue()


def _no_data(title: str, message: str):
    """A short panel in place of a chart: the title and why there is nothing to draw."""
    figure = _figure(1.4)
    axes = figure.add_subplot()
    axes.set(xticks=[], yticks=[], facecolor="#f5f7fa")
    for spine in axes.spines.values():
        spine.set_visible(False)
    axes.set_title(title)
    axes.text(0.5, 0.5, message, ha="center", va="center", fontsize=11, color=MUTED)
    return figure


def _label(text: str, width: int = 24) -> str:
    """A bar's label on at most two lines."""
    lines = textwrap.wrap(text, width) or [""]
    if len(lines) > 2:
        lines = [lines[0], textwrap.shorten(" ".join(lines[1:]), width, placeholder="…")]
    return "\n".join(lines)


def _cohort_chart(report: DigestReport):
    title = CHART_TITLES["cohorts"]
    cohorts = sorted(report.cohorts, key=lambda c: c.week)
    if not any(share is not None for c in cohorts for _, share in _shares(c)):
        return _no_data(title, "No data yet: no signature week has a measured deal")
    from matplotlib.ticker import FixedLocator, PercentFormatter

    targets = {m.key: target_text(m) for m in report.time_to}
    series = (
        ("first_contact", "First contact", BLUE, "o", "-"),
        ("kickoff", "Kickoff", ORANGE, "s", "--"),
        ("first_value", "First value", GREEN, "^", "-."),
    )
    figure = _figure()
    axes = figure.add_subplot()
    positions = list(range(len(cohorts)))
    axes.axhline(100, color=MUTED, linewidth=0.8, linestyle=(0, (2, 2)), zorder=1)
    axes.text(positions[-1] + 0.35, 100, "100%", va="center", ha="left", fontsize=7.5, color=MUTED)
    for index, (key, label, colour, marker, style) in enumerate(series):
        values = [
            share * 100 if share is not None else float("nan")
            for share in (_shares(c)[index][1] for c in cohorts)
        ]
        name = f"{label}\n{targets[key]}" if key in targets else label
        axes.plot(
            positions, values, color=colour, marker=marker, linestyle=style, linewidth=1.6,
            markersize=4.5, label=name, zorder=3,
        )  # fmt: skip
    axes.set_ylim(0, 108)
    axes.yaxis.set_major_formatter(PercentFormatter(decimals=0))
    axes.yaxis.set_major_locator(FixedLocator([0, 25, 50, 75, 100]))
    axes.grid(axis="y", color=GRID, linewidth=0.6)
    step = 1 if len(cohorts) <= 8 else 2
    axes.set_xticks(positions[::step], [f"{c.week.day} {c.week:%b}" for c in cohorts][::step])
    axes.set_xlim(-0.4, positions[-1] + 0.9)
    axes.set_xlabel("Signature week (starting Monday)")
    axes.set_ylabel("Deals on target")
    axes.set_title(title)
    figure.legend(loc="outside lower center", ncols=3, handlelength=2.2)
    return figure


def _flag_chart(report: DigestReport):
    title = CHART_TITLES["flags"]
    rows = _flag_rules(report)
    if not rows:
        return _no_data(title, "No open red flags")
    from matplotlib.ticker import MaxNLocator

    figure = _figure(max(CHART_INCHES[1] - 0.6, 0.8 + 0.32 * len(rows)))
    axes = figure.add_subplot()
    labels = [_label(t) for t, _ in rows][::-1]  # the most at the top
    counts = [n for _, n in rows][::-1]
    positions = range(len(rows))
    bars = axes.barh(positions, counts, color=BLUE, height=0.62)
    axes.set_yticks(positions, labels)
    axes.bar_label(bars, padding=3, color=INK)
    axes.set_xlim(0, max(counts) * 1.15 + 0.2)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(axis="x", color=GRID, linewidth=0.6)
    axes.set_axisbelow(True)
    axes.set_xlabel("Open red flags")
    axes.set_title(title)
    return figure


def _completeness_chart(report: DigestReport):
    title = CHART_TITLES["completeness"]
    reps = _reps(report)
    if not reps:
        return _no_data(title, "No data yet: no rep has a deal in onboarding")
    from matplotlib.ticker import FixedLocator, PercentFormatter

    figure = _figure(max(CHART_INCHES[1] - 0.6, 0.9 + 0.32 * len(reps)))
    axes = figure.add_subplot()
    reps = reps[::-1]  # barh draws bottom up: the least complete at the top
    values = [r.complete_share * 100 for r in reps]
    axes.barh(range(len(reps)), values, color=SKY, height=0.62)
    axes.set_yticks(range(len(reps)), [_label(r.rep) for r in reps])
    for position, rep in enumerate(reps):
        value = rep.complete_share * 100
        label = f"{percent(rep.complete_share)} of {plural(rep.deals, 'deal')}"
        inside = value >= 45
        axes.text(
            value - 1.5 if inside else value + 1.5, position, label,
            ha="right" if inside else "left", va="center", color=INK,
        )  # fmt: skip
    axes.set_xlim(0, 100)
    axes.xaxis.set_major_locator(FixedLocator([0, 25, 50, 75, 100]))
    axes.xaxis.set_major_formatter(PercentFormatter(decimals=0))
    axes.grid(axis="x", color=GRID, linewidth=0.6)
    axes.set_axisbelow(True)
    axes.set_xlabel("Deals whose handoff document has every field")
    axes.set_title(title)
    return figure


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height of a PNG, from its header."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise ValueError("not a PNG")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


# -- rendering -------------------------------------------------------------------------------


class _DigestContext:
    """The templates' values (``EmailRenderer.render_internal`` takes an internal context)."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.values = values

    def for_template(self) -> dict[str, Any]:
        return dict(self.values)


def render_digest(report: DigestReport, templates_dir: Path) -> RenderedDigest:
    """Subject, text and inlined HTML of the digest, and its charts by content id."""
    pictures = charts(report)
    values = template_values(report, pictures)
    rendered = EmailRenderer(templates_dir).render_internal(TEMPLATE, _DigestContext(values))
    return RenderedDigest(
        subject=rendered.subject,
        text=rendered.text,
        html=rendered.html,
        images={content_id(name): pictures[name] for name in CHARTS},
    )


def _boundary(message_id: str, part: str = "") -> str:
    return "=_" + hashlib.sha256(f"{message_id}{part}".encode()).hexdigest()[:32]


def digest_message(
    rendered: RenderedDigest,
    *,
    sender: dict[str, str],
    recipients: list[str],
    message_id: str,
    sent_at: datetime,
) -> OutgoingMail:
    """The digest as one message, built once: multipart/alternative of the text part and a
    multipart/related of the HTML and its charts (inline PNGs named by Content-ID).

    The first recipient is in To and the others in Cc (as the red-flag note addresses its
    leaders); all of them are envelope recipients. ``sender`` is ``{"name", "email"}`` and may
    name an ``envelope_from``. Every boundary derives from the Message-ID.
    """
    if not recipients:
        raise ValueError("the digest needs at least one recipient")
    message = EmailMessage()
    message["Subject"] = rendered.subject
    message["From"] = _address(sender)
    message["To"] = Address(addr_spec=recipients[0])
    if recipients[1:]:
        message["Cc"] = [Address(addr_spec=address) for address in recipients[1:]]
    message["Date"] = format_datetime(sent_at)
    message["Message-ID"] = message_id
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(rendered.text)
    message.add_alternative(rendered.html, subtype="html")
    html_part = message.get_payload()[1]
    for cid, png in rendered.images.items():
        html_part.add_related(
            png, maintype="image", subtype="png", cid=f"<{cid}>", disposition="inline",
            filename=f"{cid.partition('@')[0]}.png",
        )  # fmt: skip
    message.set_boundary(_boundary(message_id))
    if rendered.images:
        html_part.set_boundary(_boundary(message_id, "/related"))
    message.policy = HEADER_POLICY
    envelope_from = sender.get("envelope_from") or sender["email"]
    everyone = tuple(recipients)
    international = not all(a.isascii() for a in (envelope_from, *everyone))
    buffer = BytesIO()
    generator_policy = message.policy.clone(linesep="\r\n", utf8=international)
    BytesGenerator(buffer, policy=generator_policy).flatten(message)
    return OutgoingMail(message, buffer.getvalue(), envelope_from, everyone, international)


def standalone_html(rendered: RenderedDigest) -> str:
    """The HTML with each chart inlined as a data: URI, to open without the message."""
    html = rendered.html
    for cid, png in rendered.images.items():
        reference = f'src="cid:{cid}"'
        if reference not in html:
            raise ValueError(f"the digest's HTML does not show the image {cid}")
        uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        html = html.replace(reference, f'src="{uri}"')
    return html


def write_digest_file(rendered: RenderedDigest, folder: Path, stem: str) -> Path:
    """``<stem>.html`` (charts inlined, opens anywhere) and ``<stem>-<chart>.png`` beside it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for cid, png in rendered.images.items():
        (folder / f"{stem}-{cid.partition('@')[0]}.png").write_bytes(png)
    page = folder / f"{stem}.html"
    page.write_text(standalone_html(rendered), encoding="utf-8")
    return page
