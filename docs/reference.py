"""The reference pages, generated from the code so that they cannot drift from it: every config key of
docs/configuration.md (from the settings schema, `pipeline.core.config`, with the defaults and comments of
`conf/`) and every command of docs/cli.md (from the stages' docstrings and the argparse help).

A page keeps its hand-written prose; only what lies between a pair of markers is generated:

    <!-- generated: keys -->
    ...
    <!-- end generated: keys -->

`python -m docs.reference` rewrites those parts (`make reference`); `--check` fails when one is stale
(`make docs`, and tests/test_reference.py). A key's description is the comment beside or above it in
`conf/` (the class docstring for a section without one): edit it there, never on the page.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import io
import os
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import yaml
from omegaconf import OmegaConf

from pipeline.core.config import Settings
from pipeline.core.params import ROOT
from pipeline.stages.entrypoint import CONF_DIR as CONF
from pipeline.stages.entrypoint import compose

DOCS = ROOT / "docs"
HELP_COLUMNS = 100  # argparse wraps its help to the terminal: one width, whatever the terminal
MARKER = re.compile(r"<!-- generated: (?P<name>[\w-]+) -->\n.*?<!-- end generated: (?P=name) -->", re.S)
KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[\w@./-]+):(?P<rest>.*)$")


# --- conf/: comments and defaults ---------------------------------------------------------------------


@dataclass(frozen=True)
class Comments:
    """What one YAML file of conf/ says in comments: about itself (its first comment block at the left
    margin) and about each key (the comment block right above it, then the one beside it)."""

    about: str
    keys: dict[str, str]


def read_comments(path: Path, prefix: str = "") -> Comments:
    """The comments of `path`, its keys dotted and put under `prefix` (a group's package: `data.`)."""
    about: list[str] | None = None
    keys: dict[str, str] = {}
    block: list[str] = []
    parents: list[tuple[int, str]] = []
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            text = stripped[1:]
            if text.startswith("  "):  # an example command: what follows is another paragraph
                block.append("\n\n")
            elif not text.startswith(" @"):  # a Hydra directive
                block.append(text.strip())
            continue
        if about is None and block and not line.startswith(" "):
            about, block = block, []  # the file's own first comment block
        match = KEY_LINE.match(line)
        if match:
            indent = len(match["indent"])
            while parents and parents[-1][0] >= indent:
                parents.pop()
            parents.append((indent, match["key"]))
            beside = match["rest"].partition(" #")[2].strip()
            text = prose([*block, beside])
            if text:
                keys[prefix + ".".join(key for _, key in parents)] = text
        block = []
    return Comments(prose(about or []), keys)


def prose(lines: list[str]) -> str:
    """Comment lines as text, a paragraph break where an example command was."""
    return re.sub(r"\s*\n\n\s*", "\n\n", " ".join(lines)).strip()


def group_options() -> dict[str, list[str]]:
    """Each config group of conf/ (a folder of YAML files, e.g. `data`, `hydra/launcher`) -> its options."""
    folders = sorted({path.parent for path in CONF.rglob("*.yaml")} - {CONF})
    return {
        folder.relative_to(CONF).as_posix(): sorted(path.stem for path in folder.glob("*.yaml"))
        for folder in folders
    }


def default_options() -> dict[str, str]:
    """The option conf/config.yaml's defaults list picks for each group that has one by default."""
    defaults = yaml.safe_load((CONF / "config.yaml").read_text())["defaults"]
    return {
        group: option
        for item in defaults
        if isinstance(item, dict)
        for group, option in item.items()
        if option is not None and " " not in group
    }


def composed(overrides: list[str] | None = None) -> dict[str, Any]:
    """conf/ composed as the stages compose it, `???` (a value to give) left in place."""
    return OmegaConf.to_container(compose(overrides), resolve=False)


def summary(text: str, min_chars: int = 40) -> str:
    """The first sentence of `text`, and the next ones while it is shorter than `min_chars` (a lead
    such as "the product.")."""
    sentences = re.split(r"(?<=\.)\s+(?=[A-Z`])", text.split("\n\n")[0])
    words = ""
    while sentences and len(words) < min_chars:
        words = f"{words} {sentences.pop(0)}".strip()
    return words.rstrip(":") + ("" if words.endswith(".") else ".")


# --- the settings schema ------------------------------------------------------------------------------


class Schema:
    """`Settings`' JSON schema: a section's fields, their types in words, `$ref`s resolved."""

    def __init__(self) -> None:
        self.root = Settings.model_json_schema()
        self.registered = registered_names()

    def resolve(self, field: dict[str, Any]) -> dict[str, Any]:
        ref = field.get("$ref")
        return self.root["$defs"][ref.rsplit("/", 1)[1]] if ref else field

    def is_section(self, field: dict[str, Any]) -> bool:
        return "properties" in self.resolve(field)

    def type_text(self, field: dict[str, Any], key: str) -> str:
        field = self.resolve(field)
        if "const" in field:
            return f"`{field['const']}`"
        if "enum" in field:
            return ", ".join(f"`{value}`" for value in field["enum"])
        if "anyOf" in field:
            return " or ".join(self.type_text(option, key) for option in field["anyOf"])
        kind = field.get("type")
        if kind == "array" and "prefixItems" in field:  # a tuple: its items in order
            parts = ", ".join(self.type_text(item, key) for item in field["prefixItems"])
            return f"[{parts}]"
        if kind == "array":
            items = self.resolve(field["items"])
            listed = (
                f"{{{', '.join(items['properties'])}}}"
                if "properties" in items
                else self.type_text(items, key)
            )
            return f"list of {listed}"
        if kind == "string":
            if key in self.registered:
                return "registered: " + ", ".join(f"`{name}`" for name in self.registered[key])
            if field.get("format") == "path":
                return "path"
            if "pattern" in field:
                return f"text matching `{field['pattern']}`"
            return "non-empty text" if field.get("minLength") else "text"
        if kind in ("integer", "number"):
            bounds = [
                f"{sign} {field[name]}"
                for name, sign in (("minimum", "≥"), ("exclusiveMinimum", ">"))
                + (("maximum", "≤"), ("exclusiveMaximum", "<"))
                if name in field
            ]
            return ", ".join(["integer" if kind == "integer" else "number", *bounds])
        return {"boolean": "`true`, `false`", "null": "`null`"}[kind]


def registered_names() -> dict[str, list[str]]:
    """The names each registry accepts, by the config key that picks one (`Registry.key`): a config
    value that is plain text in the schema is checked against these where the settings load."""
    from pipeline.data.sources import SOURCES
    from pipeline.detection.scoring import SCORES
    from pipeline.detection.thresholds import THRESHOLD_RULES
    from pipeline.models import MODELS

    return {registry.key: registry.names() for registry in (MODELS, SCORES, THRESHOLD_RULES, SOURCES)}


def data_sources(schema: Schema) -> dict[str, dict[str, Any]]:
    """Each data source (`data.source`) -> the schema of its `data` section: the config class it is
    registered with (`pipeline.data.sources`), its nested sections added to `schema`'s definitions."""
    from pipeline.data.sources import SOURCES

    sections = {}
    for source in SOURCES.names():
        section = SOURCES.get(source).config.model_json_schema()
        schema.root["$defs"].update(section.pop("$defs", {}))
        sections[source] = section
    return sections


# --- configuration.md ---------------------------------------------------------------------------------


def flow(value: Any) -> str:
    """A config value as YAML writes it on one line."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key}: {flow(item)}" for key, item in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(flow(item) for item in value) + "]"
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    return str(value)


def cell(text: str) -> str:
    """`text` on one line, its pipes escaped: a table cell."""
    return " ".join(text.split()).replace("|", "\\|")


def table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(text) for text in row) + " |" for row in rows]
    return "\n".join(lines)


def key_rows(
    schema: Schema, section: dict[str, Any], prefix: str, values: dict[str, Any], comments: dict[str, str]
) -> Iterator[tuple[str, str, str, str]]:
    """A row per key of `section` (key, type, default, description); a nested section's keys follow
    its own row, which it has where something describes it."""
    for name, field in schema.resolve(section)["properties"].items():
        key = f"{prefix}{name}"
        if schema.is_section(field):
            about = comments.get(key) or schema.resolve(field).get("description", "")
            if about:
                yield f"`{key}`", "section", "", about
            yield from key_rows(schema, field, f"{key}.", values.get(name, {}), comments)
            continue
        default = (
            "required" if values.get(name) == "???" else f"`{flow(values[name])}`" if name in values else ""
        )
        yield f"`{key}`", schema.type_text(field, key), default, comments.get(key, "")


KEY_HEADER = ("key", "type", "default", "what it sets")


def groups_part() -> str:
    defaults = default_options()
    rows = []
    for group, options in group_options().items():
        for option in options:
            about = read_comments(CONF / group / f"{option}.yaml").about
            default = " (default)" if defaults.get(group) == option else ""
            rows.append((f"`{group}/`", f"`{option}`{default}", summary(about) if about else ""))
    return table(("group", "option", "what it is"), rows)


def keys_part() -> str:
    schema = Schema()
    config = composed()
    comments = read_comments(CONF / "config.yaml").keys
    settings = schema.root["properties"]
    parts = [
        table(
            KEY_HEADER,
            list(key_rows(schema, {"properties": {"seed": settings["seed"]}}, "", config, comments)),
        )
    ]
    for name, field in settings.items():
        if name == "seed":
            continue
        about = comments.get(name) or schema.resolve(field).get("description", "")
        parts.append(f"### `{name}`" + (f"\n\n{about}" if about else ""))
        if name == "data":
            parts.append(data_part(schema))
        elif name == "model":
            parts.append(model_part(schema))
        else:
            parts.append(table(KEY_HEADER, list(key_rows(schema, field, f"{name}.", config[name], comments))))
    return "\n\n".join(parts)


def data_part(schema: Schema) -> str:
    """`data.source` picks a source; a table of each source's keys, with its file's defaults."""
    sources = data_sources(schema)
    parts = [
        "`data.source` picks the source: "
        + ", ".join(f"[`{source}`](#data{source})" for source in sources)
        + ", each with the keys below, their defaults from `conf/data/<source>.yaml` (`data=<source>`)."
    ]
    for source, section in sources.items():
        comments = read_comments(CONF / "data" / f"{source}.yaml", prefix="data.")
        values = composed([f"data={source}"])["data"]
        fields = {name: field for name, field in section["properties"].items() if name != "source"}
        rows = list(key_rows(schema, {"properties": fields}, "data.", values, comments.keys))
        parts += [f"#### `data={source}`", comments.about, table(KEY_HEADER, rows)]
    return "\n\n".join(part for part in parts if part)


def model_part(schema: Schema) -> str:
    """`model.name` picks the builder; the other keys are its parameters, per `conf/model/<name>.yaml`."""
    name_field = schema.resolve(schema.root["properties"]["model"])["properties"]["name"]
    parts = [
        table(
            KEY_HEADER,
            [
                (
                    "`model.name`",
                    schema.type_text(name_field, "model.name"),
                    f"`{composed()['model']['name']}`",
                    "",
                )
            ],
        ),
        "Every other key of `model` is a parameter of the builder, which refuses one it does not take; "
        "the defaults of each (`model=<name>`):",
    ]
    for name in group_options()["model"]:
        comments = read_comments(CONF / "model" / f"{name}.yaml", prefix="model.")
        values = composed([f"model={name}"])["model"]
        rows = [
            (f"`model.{key}`", f"`{flow(value)}`", comments.keys.get(f"model.{key}", ""))
            for key, value in values.items()
            if key != "name"
        ]
        parts += [f"#### `model={name}`", comments.about, table(("key", "default", "what it sets"), rows)]
    return "\n\n".join(part for part in parts if part)


# --- cli.md -------------------------------------------------------------------------------------------


def docstring_summary(module: str) -> str:
    """The summary of a module's docstring, read without importing it, its `name:` lead dropped."""
    path = ROOT / Path(*module.split(".")).with_suffix(".py")
    if not path.exists():
        path = ROOT / Path(*module.split(".")) / "__init__.py"
    paragraph = (ast.get_docstring(ast.parse(path.read_text())) or "").split("\n\n")[0]
    return summary(re.sub(r"^(Stage )?`[^`]+`: ", "", " ".join(paragraph.split())))


def stages_part() -> str:
    from pipeline.stages import STAGES

    rows = [
        (f"`python -m pipeline.stages.{stage} [OVERRIDES]`", docstring_summary(f"pipeline.stages.{stage}"))
        for stage in STAGES
    ]
    rows.append(("`python -m pipeline [-m] [OVERRIDES]`", docstring_summary("pipeline.__main__")))
    return table(("command", "what it does"), rows)


def command_modules() -> list[str]:
    """The modules of `pipeline` that are argparse command lines (`main(argv)`)."""
    return sorted(
        ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for path in (ROOT / "pipeline").rglob("*.py")
        if "argparse.ArgumentParser(" in path.read_text()
    )


def help_text(module: str) -> str:
    """`python -m <module> --help` as one reads it at the repository root: a default that is a path of
    this checkout (predict's detector) shows relative to the root, and lines wrap at HELP_COLUMNS."""
    from pipeline.stages import packaging

    out = io.StringIO()
    with (
        mock.patch.dict(os.environ, {"COLUMNS": str(HELP_COLUMNS)}),
        mock.patch.object(packaging, "ROOT", Path(".")),
        contextlib.redirect_stdout(out),
        contextlib.suppress(SystemExit),
    ):
        importlib.import_module(module).main(["--help"])
    return out.getvalue().rstrip()


def commands_part() -> str:
    return "\n\n".join(
        f"### `python -m {module}`\n\n```text\n{help_text(module)}\n```" for module in command_modules()
    )


# --- the pages ----------------------------------------------------------------------------------------

PAGES: dict[str, dict[str, Callable[[], str]]] = {
    "configuration.md": {"groups": groups_part, "keys": keys_part},
    "cli.md": {"stages": stages_part, "commands": commands_part},
}


def render(text: str, parts: dict[str, Callable[[], str]]) -> str:
    """`text` with each generated part rewritten; a part without its markers is an error."""
    missing = set(parts) - {match["name"] for match in MARKER.finditer(text)}
    if missing:
        raise ValueError(f"no markers for {', '.join(sorted(missing))}")
    return MARKER.sub(
        lambda match: (
            f"<!-- generated: {match['name']} -->\n{parts[match['name']]()}\n"
            f"<!-- end generated: {match['name']} -->"
        ),
        text,
    )


def stale_pages() -> dict[Path, str]:
    """Each page whose generated parts differ from what the code gives now -> its text as it should be."""
    stale = {}
    for name, parts in PAGES.items():
        path = DOCS / name
        text = path.read_text()
        fresh = render(text, parts)
        if fresh != text:
            stale[path] = fresh
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m docs.reference", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when a page is stale, write nothing")
    args = parser.parse_args(argv)
    stale = stale_pages()
    for path, text in stale.items():
        if args.check:
            print(f"{path.relative_to(ROOT)} is stale: run `make reference`", file=sys.stderr)
        else:
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
