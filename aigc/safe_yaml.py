"""Safe YAML loading for text aigc did not write: a config, an override, a logged model's MLmodel file.

yaml.safe_load builds no objects, but a small document can still exhaust the machine: aliases that
expand exponentially ("billion laughs") or nesting past Python's recursion limit. `load` measures the
document as it would be built, aliases expanded, and refuses it first; every problem is one UserError
naming `where`.
"""

from __future__ import annotations

import yaml

from aigc.errors import UserError

MAX_VALUES = 100_000  # YAML values after expanding aliases: a shipped config has under 200
MAX_DEPTH = 32  # nesting levels: a shipped config has 4


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses deep nesting while composing, before Python's recursion limit."""

    depth = 0

    def compose_node(self, parent, index):
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise UserError(f"nested more than {MAX_DEPTH} levels deep")
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def load(text: str, where: str):
    """yaml.safe_load that refuses deep nesting and aliases that expand past MAX_VALUES ("billion laughs")."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expanded(node)
        return loader.construct_document(node)
    except yaml.YAMLError as error:
        raise UserError(f"{where}: not valid YAML: {error}") from None
    except UserError as error:
        raise UserError(f"{where}: {error}") from None
    finally:
        loader.dispose()


def _check_expanded(root):
    """Size and depth of the document as safe_load would build it, aliases expanded, without building it.

    A memo per node keeps this linear in the file's size even when the expansion is
    exponential; a node met again while still open is an alias to its own ancestor.
    """
    measured: dict[int, tuple[int, int]] = {}  # id(node) -> (values, levels)
    open_nodes: set[int] = set()
    stack = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in measured:
            continue
        children = _children(node)
        if not children_done:
            if id(node) in open_nodes:
                raise UserError("a YAML alias refers to a value that contains it (a loop)")
            open_nodes.add(id(node))
            stack.append((node, True))
            stack.extend((child, False) for child in children)
            continue
        open_nodes.discard(id(node))
        values = 1 + sum(measured[id(child)][0] for child in children)
        levels = 1 + max((measured[id(child)][1] for child in children), default=0)
        if values > MAX_VALUES:
            raise UserError(f"holds more than {MAX_VALUES} values once its YAML aliases (*name) are expanded; "
                            "a config needs a few hundred: write the values out")
        if levels > MAX_DEPTH:
            raise UserError(f"nested more than {MAX_DEPTH} levels deep once its YAML aliases are expanded")
        measured[id(node)] = values, levels


def _children(node) -> list:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []
