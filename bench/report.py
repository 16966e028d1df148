"""Result rows and the table ``make bench`` prints (plain text for the terminal, Markdown for RESULTS.md)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Row:
    section: str
    metric: str
    value: str
    goal: str = ""
    met: bool | None = None  # None: informational, no goal


@dataclass
class Section:
    name: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    load_before: str = ""
    load_after: str = ""
    seconds: float = 0.0

    def add(self, metric: str, value: str, goal: str = "", met: bool | None = None) -> None:
        self.rows.append(Row(self.name, metric, value, goal, met))

    def note(self, text: str) -> None:
        self.notes.append(text)


def verdict(met: bool | None) -> str:
    return "" if met is None else ("yes" if met else "NO")


def text_table(sections: list[Section]) -> str:
    header = ("section", "metric", "value", "goal", "met")
    rows = [header] + [
        (r.section, r.metric, r.value, r.goal, verdict(r.met)) for s in sections for r in s.rows
    ]  # fmt: skip
    rows += [(s.name, "load avg before → after", f"{s.load_before} → {s.load_after}", "", "") for s in sections]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    line = "-+-".join("-" * w for w in widths)
    out = [" | ".join(c.ljust(w) for c, w in zip(rows[0], widths, strict=True)), line]
    out += [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows[1:]]
    return "\n".join(out)


def markdown_table(sections: list[Section]) -> str:
    out = ["| section | metric | value | goal | met |", "|---|---|---|---|---|"]
    for s in sections:
        out += [f"| {r.section} | {r.metric} | {r.value} | {r.goal} | {verdict(r.met)} |" for r in s.rows]
    out += ["", "| section | load avg before → after | seconds |", "|---|---|---|"]
    out += [f"| {s.name} | {s.load_before} → {s.load_after} | {s.seconds:.0f} |" for s in sections]
    return "\n".join(out)


def notes(sections: list[Section]) -> str:
    return "\n".join(f"* {s.name}: {n}" for s in sections for n in s.notes)
