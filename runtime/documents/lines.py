"""Where in a document's text each problem is: the line of the key or item its path names.

A problem's path (``steps[2].config.methd``) is followed through the YAML node tree of the
text the document was read from (JSON is read the same way): mapping keys by name, sequence
items by index. A path that ends at a key gives that key's line (the line an editor should
open at for an unknown or misspelt field); a path that goes further than the text gives the
line of the deepest node found. Text that cannot be composed leaves the problems as they are.
"""

from __future__ import annotations

import re

import attrs
import yaml

from runtime.model.errors import Problem

_PART = re.compile(r"\[(\d+)\]|([^.\[\]]+)")
_TEMPLATE = re.compile(r"template '(\$\{[^']*\})'")
_COMPOSER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when there: node trees only, fast


def with_lines(problems: list[Problem], text: str | bytes) -> list[Problem]:
    """The problems, each with the (1-based) line of the text its path names, where found."""
    if not problems:
        return problems
    try:
        root = yaml.compose(text, Loader=_COMPOSER)
    except (yaml.YAMLError, RecursionError, ValueError):
        return problems
    if root is None:
        return problems
    try:
        return [problem if problem.line is not None else attrs.evolve(problem, line=_line(root, problem))
                for problem in problems]
    except RecursionError:  # a document nested deeper than Python recurses: no lines, the problems stand
        return problems


def _line(root: yaml.Node, problem: Problem) -> int | None:
    node, line = _node_at(root, problem.path)
    quoted = _TEMPLATE.search(problem.message)  # a template's problem: the line of the text holding it
    if node is not None and quoted is not None:
        holder = _scalar_with(node, quoted[1])
        if holder is not None:
            return holder.start_mark.line + 1
    return line


def located(name: str, problem: Problem) -> str:
    """``NAME:LINE: PATH (step 'ID'): MESSAGE``, the form editors and terminals link to a line."""
    where = f"{name}:{problem.line}" if problem.line is not None else name
    step = f" (step '{problem.step_id}')" if problem.step_id else ""
    return f"{where}: {problem.path}{step}: {problem.message}"


def line_of(root: yaml.Node, path: str) -> int | None:
    """The line of the node ``path`` names (``$``: none)."""
    return _node_at(root, path)[1]


def _node_at(root: yaml.Node, path: str) -> tuple[yaml.Node | None, int | None]:
    if path in ("", "$"):
        return None, None
    node, line = root, None
    for index, key in _PART.findall(path):
        if isinstance(node, yaml.SequenceNode) and index:
            if int(index) >= len(node.value):
                break
            node = node.value[int(index)]
            line = node.start_mark.line + 1
        elif isinstance(node, yaml.MappingNode) and key:
            pair = next(((k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == key), None)
            if pair is None:
                break
            line = pair[0].start_mark.line + 1
            node = pair[1]
        else:
            break
    return node, line


def _scalar_with(node: yaml.Node, text: str) -> yaml.ScalarNode | None:
    if isinstance(node, yaml.ScalarNode):
        return node if text in str(node.value) else None
    children = [v for pair in node.value for v in pair] if isinstance(node, yaml.MappingNode) else \
        list(node.value) if isinstance(node, yaml.SequenceNode) else []
    return next((found for child in children if (found := _scalar_with(child, text)) is not None), None)
