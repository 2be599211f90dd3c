"""YAML as the toolkit reads it: `safe_load` (plain data, never objects) that refuses a key
given twice in one mapping (PyYAML keeps the last silently), with errors that name the file
and the line."""

from __future__ import annotations

from pathlib import Path

import yaml

from implicit_sparsity.errors import ConfigError, first_line


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader whose mappings refuse duplicate keys."""


def _mapping_without_duplicates(loader: _StrictLoader, node: yaml.MappingNode, deep=False):
    loader.flatten_mapping(node)
    seen = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, f"a mapping key must be a plain value, got {key!r}",
                key_node.start_mark) from None
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} is given twice (first on line {seen[key] + 1})",
                key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                              _mapping_without_duplicates)


def parse_yaml(text: str, where: str):
    """The YAML value of `text`; one ConfigError line naming `where` and the line."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(error, "problem", None)
        detail = f": {problem}" if problem and "twice" in str(problem) else ""
        raise ConfigError(f"{where} is not valid YAML{line}{detail}") from None
    except RecursionError:
        raise ConfigError(f"{where} is nested too deeply") from None


def load_yaml_file(path: str | Path, what: str = "config"):
    """The YAML value of a file; one line if it cannot be read or parsed."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or first_line(error)
        raise ConfigError(f"cannot read {what} {path}: {reason}") from None
    return parse_yaml(text, f"{what} {path}")
