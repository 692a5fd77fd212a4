"""The config as users read it: each field's doc from its declaration, the resolved config as
commented YAML (`exectune config`), per-section help, and the flat and dict forms."""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import io
import textwrap
import tokenize
from pathlib import Path
from typing import Any

import yaml

from exectune_jax.config.schema import Config

# Field documentation: the comments beside (and just above) each field where it is declared


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Field name -> its doc: the full-line comments right above the field, then the comment
    trailing its line. Read from the class source, so the docs live where the field does."""
    source = textwrap.dedent(inspect.getsource(cls))
    comments: dict[int, tuple[str, bool]] = {}  # line -> (text, whole line)
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            whole_line = tok.line.lstrip().startswith("#")
            comments[tok.start[0]] = (tok.string.lstrip("#").strip(), whole_line)
    docs = {}
    names = {f.name for f in dataclasses.fields(cls)}
    for node in ast.parse(source).body[0].body:
        if not isinstance(node, ast.AnnAssign) or getattr(node.target, "id", None) not in names:
            continue
        above, line = [], node.lineno - 1
        while line in comments and comments[line][1]:
            above.insert(0, comments[line][0])
            line -= 1
        trailing = [comments[n][0] for n in range(node.lineno, node.end_lineno + 1)
                    if n in comments and not comments[n][1]]
        docs[node.target.id] = " ".join(above + trailing)
    return docs


def section_doc(cls: type) -> str:
    doc = inspect.getdoc(cls) or ""
    return "" if doc.startswith(f"{cls.__name__}(") else doc.split("\n\n")[0].replace("\n", " ")


def _flow(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 20, sort_keys=False).strip()
    return text.removesuffix("...").strip()


def render(config: Any, indent: int = 0, width: int = 100) -> str:
    """The config as YAML (loadable again with `--config`) with each field's doc as a comment."""
    lines = []
    pad = "  " * indent
    docs = field_docs(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        nested = dataclasses.is_dataclass(value)
        doc = docs.get(f.name) or (section_doc(type(value)) if nested else "")
        head = f"{pad}{f.name}:" + ("" if nested else f" {_flow(value)}")
        if doc and len(head) + len(doc) + 4 <= width:
            lines.append(f"{head}  # {doc}")
        else:
            lines += textwrap.wrap(doc, width, initial_indent=f"{pad}# ", subsequent_indent=f"{pad}# ")
            lines.append(head)
        if nested:
            lines.append(render(value, indent + 1, width))
    return "\n".join(lines)


def section_help(cls: type, prefix: str) -> str:
    """`--help` text for one section: each field with its default and doc."""
    default = cls()
    docs = field_docs(cls)
    title = f"config section `{prefix.rstrip('.')}`" if prefix else "top-level config fields"
    lines = [title + (f": {section_doc(cls)}" if prefix and section_doc(cls) else "")]
    for f in dataclasses.fields(cls):
        value = getattr(default, f.name)
        shown = type(value).__name__ + " section" if dataclasses.is_dataclass(value) else _flow(value)
        lines.append(f"  {prefix}{f.name}={shown}")
        if docs.get(f.name):
            lines += textwrap.wrap(docs[f.name], 92, initial_indent="      ",
                                   subsequent_indent="      ")
    return "\n".join(lines)


def flat(config: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted field -> value over every section (mappings and lists stay whole values)."""
    out = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            out.update(flat(value, f"{prefix}{f.name}."))
        else:
            out[prefix + f.name] = value
    return out


def to_dict(config: Any) -> dict:
    """Plain data for logging and for writing the resolved config next to a run."""
    return dataclasses.asdict(config)


def dump(config: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
