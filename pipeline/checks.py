"""Checks a user can run before starting anything: the SLA policy file read with line numbers, and
the configuration. Every problem is one line `file:line: what is wrong`, never a traceback."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from pipeline.config import ConfigError, config_file, load_settings, read_config_file
from pipeline.sla.policy import PolicyError, PolicySet


class _LineLoader(yaml.SafeLoader):
    """SafeLoader whose date values fail as YAML errors with a position (PyYAML raises a bare
    ValueError such as `month must be in 1..12` for `2026-13-01`, with no line)."""


def _timestamp(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> Any:
    try:
        return yaml.SafeLoader.construct_yaml_timestamp(loader, node)
    except ValueError as error:
        raise yaml.constructor.ConstructorError(
            None, None, f"invalid date {node.value!r}: {error}", node.start_mark
        ) from None


_LineLoader.add_constructor("tag:yaml.org,2002:timestamp", _timestamp)

_POLICY = re.compile(r"^policy (?:'(?P<name>[^']*)' )?\(?#(?P<index>\d+)\)?: (?P<rest>.*)$")
_CALENDAR = re.compile(r"^calendar '(?P<name>[^']*)': (?P<rest>.*)$")


def _child(node: yaml.Node | None, key: str | int) -> tuple[yaml.Node | None, int | None]:
    """The value under `key` of a mapping node (or item `key` of a sequence) and its line (1-based)."""
    if isinstance(node, yaml.MappingNode) and isinstance(key, str):
        for key_node, value in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.value == key:
                return value, key_node.start_mark.line + 1
    if isinstance(node, yaml.SequenceNode) and isinstance(key, int) and 0 <= key < len(node.value):
        item = node.value[key]
        return item, item.start_mark.line + 1
    return None, None


def _descend(node: yaml.Node | None, line: int, fields: str) -> int:
    for part in fields.split("."):
        child, child_line = _child(node, int(part) if part.isdigit() else part)
        if child_line is None:
            break
        node, line = child, child_line
    return line


def problem_line(root: yaml.Node | None, problem: str) -> int:
    """Best line for one of PolicyError's problems (`policy 'x' (#2): first_response: ...`)."""
    match = _POLICY.match(problem)
    section: tuple[str, str | int] | None = None
    if match:
        section = ("policies", int(match.group("index")) - 1)
    elif match := _CALENDAR.match(problem):
        section = ("calendars", match.group("name"))
    if section is None or match is None:
        head = problem.split(":", 1)[0]
        _, line = _child(root, head)
        return line or 1
    top, line = _child(root, section[0])
    node, item_line = _child(top, section[1])
    line = item_line or line or 1
    fields = match.group("rest").split(": ", 1)
    if len(fields) == 2 and re.fullmatch(r"[A-Za-z0-9_.]+", fields[0]):
        node_line = _descend(node, line, fields[0])
        for part in fields[0].split("."):
            node = _child(node, int(part) if part.isdigit() else part)[0]
        line, message = node_line, fields[1]
    else:
        message = fields[-1]
    unknown = re.match(r"unknown key '([^']+)'", message)
    if unknown:
        line = _child(node, unknown.group(1))[1] or line
    return line


def policy_problems(path: Path) -> list[str]:
    """Every problem of the policy file as `file:line: problem`; empty when it is valid."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
        return [f"{path}: cannot read the SLA policy file: {reason}"]
    try:
        data = yaml.load(text, Loader=_LineLoader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        cause = " ".join(part for part in (error.context, error.problem) if part)
        return [f"{where}: not valid YAML: {cause}"]
    except yaml.YAMLError as error:
        return [f"{path}: not valid YAML: {error}"]
    try:
        PolicySet.from_dict(data, str(path))
    except PolicyError as error:
        root = yaml.compose(text, Loader=_LineLoader)
        return [f"{path}:{problem_line(root, problem)}: {problem}" for problem in error.problems]
    return []


def config_problems() -> tuple[str | None, list[str]]:
    """The configuration file checked (None: no file) and its problems, one per line."""
    path = config_file()
    try:
        if path is not None:
            read_config_file(path)
        load_settings()
    except ConfigError as error:
        lines = str(error).splitlines()
        if len(lines) > 1 and lines[0].startswith("invalid Touchline configuration"):
            lines = [line.strip() for line in lines[1:]]
        return (str(path) if path else None), lines
    return (str(path) if path else None), []
