"""The configuration reference, docs/configuration.md, generated from whisperd.settings so that
it cannot drift from what the parser (whisperd.config) accepts: each section's docstring, and each
key's type, default, ``doc`` and range check.

    python -m whisperd.config_reference > docs/configuration.md    # write it
    python -m whisperd.config_reference --check docs/configuration.md    # exit 1 if it is stale
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import sys
from typing import Any

from whisperd import config, settings

OUTPUT = "docs/configuration.md"
COMMAND = f"python -m whisperd.config_reference > {OUTPUT}"


def sections() -> list[tuple[str, type]]:
    """(name, dataclass) of every section, in the order of the Config dataclass (and of the file)."""
    return [
        (f.name, f.default_factory)
        for f in dataclasses.fields(settings.Config)
        if dataclasses.is_dataclass(f.default_factory)
    ]


def default_of(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def toml_value(value: Any) -> str:
    """``value`` as TOML writes it: strings quoted, booleans lowercase, lists as arrays."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # JSON's escapes are TOML's basic-string escapes
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def type_name(f: dataclasses.Field) -> str:
    """The type as the parser's messages name it ("must be an integer"), without the article."""
    return re.sub(r"^an? ", "", config._TYPE_NAMES[config._KINDS[f.type]])


def meaning(f: dataclasses.Field) -> str:
    """The key's doc, then the rule its range check enforces (its ``why``), as a sentence."""
    why = f.metadata["why"] if f.metadata.get("check") is not None else ""
    if not why:
        return f.metadata["doc"]
    return f"{f.metadata['doc']} {why[0].upper()}{why[1:]}."


def intro(cls: type) -> str:
    """The section's docstring on one line."""
    return " ".join((cls.__doc__ or "").split())


def code(text: str) -> str:
    """``text`` as a Markdown code span (a longer fence when it holds a backtick)."""
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def render() -> str:
    """The whole reference, in Markdown."""
    lines = [
        "# Configuration reference",
        "",
        f"Generated from `whisperd/settings.py` by `{COMMAND}`; do not edit it by hand. The package installs "
        f"the configuration file as `{config.DEFAULT_PATH}` (`--config` or `${config.ENV_VAR}` name another); "
        "every key is optional, and its default is what an absent key means.",
    ]
    for name, cls in sections():
        lines += ["", f"## [{name}]", "", intro(cls), "", "| key | type | default | meaning |", "|---|---|---|---|"]
        for f in dataclasses.fields(cls):
            row = (code(f.name), type_name(f), code(toml_value(default_of(f))), meaning(f))
            lines.append("| " + " | ".join(cell(c) for c in row) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m whisperd.config_reference", description="Print the configuration reference (Markdown)."
    )
    parser.add_argument("--check", metavar="PATH", help="exit 1 if PATH is not the reference as generated now")
    args = parser.parse_args(argv)
    text = render()
    if args.check is None:
        sys.stdout.write(text)
        return 0
    try:
        with open(args.check, encoding="utf-8", newline="") as f:
            current = f.read()
    except (OSError, UnicodeDecodeError) as e:
        print(f"{args.check}: cannot be read ({type(e).__name__}); run `{COMMAND}`", file=sys.stderr)
        return 1
    if current != text:
        print(f"{args.check}: differs from whisperd/settings.py; run `{COMMAND}`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
