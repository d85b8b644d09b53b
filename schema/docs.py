"""docs/configuration.md's reference tables, rendered from the schema.

The hand-written prose of that file stays; everything between the markers
below is generated (`python -m scripts.config_docs` rewrites it, and a unit
test fails when the file and the schema disagree).  Plug-in sections
(scheduler options, health-check kinds) appear once their plug-ins have been
imported: the caller loads them first, this module imports none.
"""
from __future__ import annotations

from schema.core import Key, Section
from schema.keys import SECTIONS, plugins

BEGIN = "<!-- BEGIN GENERATED FROM schema/keys.py: edit the schema, then run scripts/config_docs.py -->"
END = "<!-- END GENERATED -->"

#: the order and headings of the core sections
_CORE = (
    ("node", "`[node]`"),
    ("timeouts", "`[timeouts]`"),
    ("limits", "`[limits]`"),
    ("", "Top level"),
    ("services", "`[[services]]`"),
    ("services.real_servers", "`[[services.real_servers]]`"),
    ("services.health", "`health` (a table in a service)"),
    ("interfaces", "`[interfaces]`"),
    ("vrrp", "`[vrrp]`"),
    ("sync", "`[sync]`"),
    ("notify", "`[notify]`"),
    ("cluster", "`[cluster]`"),
)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _row(k: Key) -> str:
    default = k.default_text()
    if not k.required and k.shown is None:
        default = f"`{default}`"
    doc = k.doc + (". A reload that changes it is refused: restart the node" if k.restart else "")
    return (f"| `{k.name}` | {k.type_name()} | {_cell(default)} | {k.unit} | "
            f"{_cell(k.range_text())} | {_cell(doc)} |")


def table(section: Section) -> list[str]:
    lines = ["| key | type | default | unit | range | meaning |", "|---|---|---|---|---|---|"]
    lines += [_row(k) for k in section]
    return lines


def render() -> str:
    out = [BEGIN, ""]
    for path, title in _CORE:
        s = SECTIONS[path]
        out.append(f"### {title}")
        out.append("")
        note = s.doc[0].upper() + s.doc[1:] + "."
        if s.restart:
            note += " A reload that changes this section is refused: restart the node."
        out += [note, ""]
        out += table(s) + [""]
    kinds = plugins("health")
    if kinds:
        out += ["### Health-check kinds", "",
                "Each kind is a plug-in; besides the keys above, a check takes its kind's keys.", ""]
        for name, s in kinds.items():
            out.append(f"#### `kind = \"{name}\"`: {s.doc}")
            out.append("")
            out += (table(s) if s.keys else ["No keys of its own."]) + [""]
    scheds = plugins("scheduler")
    if scheds:
        out += ["### Schedulers", "",
                "A scheduler is loaded by name when a service first names it. Its options are "
                "set per service, e.g. `scheduler_options = {tab_bits = 10}`.", ""]
        for name, s in scheds.items():
            out.append(f"#### `{name}`: {s.doc}")
            out.append("")
            out += (table(s) if s.keys else ["No options."]) + [""]
    out.append(END)
    return "\n".join(out) + "\n"


def splice(text: str, generated: str) -> str:
    """`text` with the part between the markers replaced by `generated`."""
    start, end = text.index(BEGIN), text.index(END) + len(END) + 1
    return text[:start] + generated + text[end:]


def generated_part(text: str) -> str:
    start, end = text.index(BEGIN), text.index(END) + len(END) + 1
    return text[start:end]
