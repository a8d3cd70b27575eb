"""Read manifests: files, directories and stdin; YAML (multi-document) and JSON; List wrappers.

This is the only module of the compiler that touches the file system. It turns bytes into plain
Python objects (dicts, lists, strings, numbers), each tagged with where it came from, and never
raises for bad input: every problem becomes an error string ``FILE:LINE:COLUMN: problem``.

Hostile input is bounded: files over ``MAX_FILE_BYTES`` are refused before reading, YAML aliases
may not expand a document by more than ``MAX_ALIAS_EXPANSION`` nodes (the "billion laughs"), and
deeply nested documents fail cleanly instead of overflowing the C stack (libyaml's composer
recurses without a limit, so deep input is composed by PyYAML's Python composer instead).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.resolver import Resolver

from compiler.model import Origin

MAX_FILE_BYTES = 256 * 1024 * 1024
MAX_ALIAS_EXPANSION = 1_000_000  # nodes that aliases may add to one document
MAX_NESTING = 500  # above this (estimated) depth the safe Python composer is used
MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
STDIN_NAME = "<stdin>"

try:  # libyaml's parser is ~3x faster than the pure-Python one
    from yaml._yaml import CParser as _Parser

    HAVE_LIBYAML = True
except ImportError:  # pragma: no cover - depends on how PyYAML was built
    from yaml.parser import Parser as _Parser
    from yaml.reader import Reader
    from yaml.scanner import Scanner

    HAVE_LIBYAML = False


@dataclass(frozen=True)
class RawObject:
    """One top-level object as loaded: not validated yet.

    ``line`` is 1-based (None for JSON); ``item`` is the index inside a ``kind: *List`` wrapper.
    """

    obj: Any
    origin: Origin
    line: int | None = None
    item: int | None = None


# ---------------------------------------------------------------------------------------------
# YAML loader: SafeLoader semantics plus duplicate-key errors, alias-bomb and depth guards.

# Kubernetes converts YAML to JSON, where timestamps are plain strings; PyYAML's timestamp and
# "=" resolvers would instead raise on odd values in fields npemu never reads.
_DROPPED_TAGS = {"tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:value"}


class _Resolver(Resolver):
    yaml_implicit_resolvers: ClassVar[dict[Any, Any]] = {
        first: [(tag, rx) for tag, rx in resolvers if tag not in _DROPPED_TAGS]
        for first, resolvers in Resolver.yaml_implicit_resolvers.items()
    }


class _CheckingConstructor(SafeConstructor):
    """SafeConstructor that records duplicate keys and refuses alias bombs and cycles."""

    def init_checks(self, may_alias: bool) -> None:
        self.may_alias = may_alias  # no "*" in the text: no alias, nothing to expand
        self.problems: list[tuple[int, int, str]] = []  # (line, column, message), 1-based
        self.doc_line: int | None = None
        self.item_lines: list[int] = []

    def construct_document(self, node: Node) -> Any:
        self.doc_line = node.start_mark.line + 1
        self.item_lines = _item_lines(node)
        problem = _expansion_problem(node) if self.may_alias else None
        if problem:
            mark = node.start_mark
            self.problems.append((mark.line + 1, mark.column + 1, problem))
            return None
        return super().construct_document(node)

    def construct_mapping(self, node: Node, deep: bool = False) -> Any:
        if isinstance(node, MappingNode):
            self._check_duplicates(node)
        return super().construct_mapping(node, deep=deep)

    def _check_duplicates(self, node: MappingNode) -> None:
        seen: dict[str, Any] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, ScalarNode):
                continue
            first = seen.setdefault(key_node.value, key_node.start_mark)
            if first is not key_node.start_mark:
                mark = key_node.start_mark
                self.problems.append(
                    (
                        mark.line + 1,
                        mark.column + 1,
                        f'duplicate key "{key_node.value}" (first defined at line '
                        f"{first.line + 1}, column {first.column + 1})",
                    )
                )


def _item_lines(node: Node) -> list[int]:
    """Lines of a List's items, so errors can point into a `kubectl get -o yaml` dump."""
    if not isinstance(node, MappingNode):
        return []
    for key_node, value_node in node.value:
        if getattr(key_node, "value", None) == "items" and isinstance(value_node, SequenceNode):
            return [item.start_mark.line + 1 for item in value_node.value]
    return []


def _children(node: Node) -> list[Node]:
    if isinstance(node, MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, SequenceNode):
        return node.value
    return []


def _expansion_problem(root: Node) -> str | None:
    """Why this document's aliases are unacceptable (a cycle or a blow-up), else None.

    PyYAML shares aliased nodes, so a "billion laughs" document is small in memory until
    something walks it. Count the nodes a full walk would visit (memoised per node, iterative,
    so neither time nor the stack depends on the expansion) and compare with the distinct ones.
    """
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            on_path.discard(key)
            sizes[key] = 1 + sum(sizes[id(c)] for c in _children(node))
            continue
        if key in sizes:
            continue
        if key in on_path:
            return "recursive YAML alias (a node contains itself)"
        on_path.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in sizes)
    expanded, distinct = sizes[id(root)], len(sizes)
    if expanded - distinct > MAX_ALIAS_EXPANSION:
        return (
            f"YAML aliases expand this document to {expanded} nodes from {distinct} "
            f"(at most {MAX_ALIAS_EXPANSION} added nodes are allowed)"
        )
    return None


if HAVE_LIBYAML:

    class _FastLoader(_Parser, _CheckingConstructor, _Resolver):
        """libyaml parser and composer: only for input known to be shallow."""

        def __init__(self, stream: str) -> None:
            _Parser.__init__(self, stream)
            _CheckingConstructor.__init__(self)
            _Resolver.__init__(self)
            self.init_checks("*" in stream)

    class _DeepLoader(_FastLoader):
        """libyaml events, PyYAML's Python composer: deep input raises RecursionError."""

        def __init__(self, stream: str) -> None:
            super().__init__(stream)
            Composer.__init__(self)

    for _name in (
        "check_node",
        "get_node",
        "get_single_node",
        "compose_document",
        "compose_node",
        "compose_scalar_node",
        "compose_sequence_node",
        "compose_mapping_node",
    ):
        setattr(_DeepLoader, _name, getattr(Composer, _name))

else:  # pragma: no cover

    class _FastLoader(Reader, Scanner, _Parser, Composer, _CheckingConstructor, _Resolver):
        def __init__(self, stream: str) -> None:
            Reader.__init__(self, stream)
            Scanner.__init__(self)
            _Parser.__init__(self)
            Composer.__init__(self)
            _CheckingConstructor.__init__(self)
            _Resolver.__init__(self)
            self.init_checks("*" in stream)

    _DeepLoader = _FastLoader


_DEEP_BLOCK = re.compile(rf"^[ ?-]{{{MAX_NESTING},}}", re.MULTILINE)


_BRACKET = re.compile(r"[\[\]{}]")


def _may_be_deep(text: str) -> bool:
    """Cheap over-estimate: could this text nest deeper than MAX_NESTING?

    Flow nesting needs one open bracket per level (brackets inside quoted strings only make
    the estimate larger); block nesting needs at least one column of indentation (or a
    compact "- ") per level on the line that opens it.
    """
    depth = 0
    for m in _BRACKET.finditer(text):
        depth += 1 if m.group() in "[{" else -1
        if depth > MAX_NESTING:
            return True
    return _DEEP_BLOCK.search(text) is not None


def _mark_error(name: str, err: yaml.YAMLError) -> str:
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    problem = getattr(err, "problem", None) or str(err)
    context = getattr(err, "context", None)
    where = f"{name}:{mark.line + 1}:{mark.column + 1}" if mark else name
    text = f"{where}: {problem}"
    ctx_mark = getattr(err, "context_mark", None)
    if context and ctx_mark is not None and ctx_mark is not mark:
        text += f" ({context} at line {ctx_mark.line + 1}, column {ctx_mark.column + 1})"
    elif context:
        text += f" ({context})"
    return text


def _load_yaml(text: str, name: str) -> tuple[list[RawObject], list[str]]:
    loader = (_DeepLoader if _may_be_deep(text) else _FastLoader)(text)
    objects: list[RawObject] = []
    errors: list[str] = []
    index = 0
    try:
        while loader.check_node():
            data = loader.get_data()
            objects.extend(_expand(data, Origin(name, index), loader.doc_line, loader.item_lines))
            index += 1
    except yaml.YAMLError as err:
        errors.append(_mark_error(name, err))
    except RecursionError:
        errors.append(f"{name}: document {index}: nested too deeply")
    except (ValueError, TypeError, OverflowError) as err:  # e.g. an integer with 10k digits
        errors.append(f"{name}: document {index}: {err}")
    finally:
        loader.dispose()
    errors[:0] = [f"{name}:{line}:{col}: {msg}" for line, col, msg in loader.problems]
    return objects, errors


# ---------------------------------------------------------------------------------------------
# JSON: faster than YAML; duplicate keys are found here and located by re-reading as YAML.


class _DuplicateKey(Exception):
    pass


def _pairs_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _load_json(text: str, name: str) -> tuple[list[RawObject], list[str]] | None:
    """Objects from a JSON text, or None when it is not JSON (then it is read as YAML)."""
    try:
        data = json.loads(text, object_pairs_hook=_pairs_without_duplicates)
    except _DuplicateKey as dup:
        located = _load_yaml(text, name)[1]
        return [], located or [f'{name}: duplicate key "{dup.args[0]}"']
    except json.JSONDecodeError as err:
        if name.endswith(".json"):
            return [], [f"{name}:{err.lineno}:{err.colno}: {err.msg}"]
        return None
    except RecursionError:
        return [], [f"{name}: nested too deeply"]
    except ValueError as err:
        return [], [f"{name}: {err}"]
    start = _JSON_START.match(text)
    line = text.count("\n", 0, start.end()) + 1 if start else None
    return _expand(data, Origin(name, 0), line, []), []


# ---------------------------------------------------------------------------------------------
# Documents -> objects.


def _expand(data: Any, origin: Origin, line: int | None, item_lines: list[int]) -> list[RawObject]:
    """A document as objects: empty ones vanish; ``kind: List``/``*List`` yield their items.

    Items of a typed list (``PodList``) may omit kind and apiVersion: they take the list's.
    """
    if data is None:
        return []
    kind = data.get("kind") if isinstance(data, dict) else None
    items = data.get("items") if isinstance(data, dict) else None
    if not (isinstance(kind, str) and kind.endswith("List") and isinstance(items, list)):
        return [RawObject(data, origin, line)]
    item_kind = kind[: -len("List")]
    out = []
    for i, item in enumerate(items):
        if isinstance(item, dict) and item_kind and "kind" not in item:
            item = {"kind": item_kind, "apiVersion": data.get("apiVersion"), **item}
        item_line = item_lines[i] if i < len(item_lines) else None
        out.append(RawObject(item, origin, item_line, i))
    return out


_JSON_START = re.compile(r"\s*[\[{]")


def load_text(text: str, name: str) -> tuple[list[RawObject], list[str]]:
    """Objects and errors from one manifest text (YAML stream or JSON). Never raises."""
    if len(text) > MAX_FILE_BYTES:
        return [], [f"{name}: larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB, refused"]
    text = text.removeprefix("\ufeff")
    if name.endswith(".json") or _JSON_START.match(text):
        loaded = _load_json(text, name)
        if loaded is not None:
            return loaded
    return _load_yaml(text, name)


def _read_file(path: str) -> tuple[str | None, str | None]:
    """(text, None) or (None, error)."""
    try:
        size = os.stat(path).st_size
        if size > MAX_FILE_BYTES:
            return None, f"{path}: {size} bytes, larger than {MAX_FILE_BYTES // 2**20} MiB, refused"
        with open(path, "rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)
    except OSError as err:
        return None, f"{path}: {err.strerror or err}"
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError as err:
        return None, f"{path}: not UTF-8 text (byte {err.start})"


def iter_manifest_files(directory: str) -> Iterator[str]:
    """Manifest files under a directory, recursively, in sorted path order (as kubectl -R)."""
    found = []
    for root, dirs, files in os.walk(directory):
        dirs.sort()
        found.extend(os.path.join(root, f) for f in files if f.endswith(MANIFEST_SUFFIXES))
    yield from sorted(found)


def load_paths(
    paths: Sequence[str], stdin_text: str | None = None
) -> tuple[list[RawObject], list[str]]:
    """All objects and all errors from ``-f`` arguments: files, directories, ``-`` (stdin).

    The caller reads stdin and passes its text, so this stays testable; ``-`` without
    ``stdin_text`` is an error.
    """
    objects: list[RawObject] = []
    errors: list[str] = []
    for path in paths:
        if path == "-":
            if stdin_text is None:
                errors.append(f"{STDIN_NAME}: '-' given but no standard input text")
                continue
            objs, errs = load_text(stdin_text, STDIN_NAME)
        elif os.path.isdir(path):
            files = list(iter_manifest_files(path))
            if not files:
                errors.append(f"{path}: no {', '.join(MANIFEST_SUFFIXES)} files in directory")
            objs, errs = [], []
            for file in files:
                more_objs, more_errs = _load_file(file)
                objs += more_objs
                errs += more_errs
        else:
            objs, errs = _load_file(path)
        objects += objs
        errors += errs
    return objects, errors


def _load_file(path: str) -> tuple[list[RawObject], list[str]]:
    text, error = _read_file(path)
    if text is None:
        return [], [error or f"{path}: unreadable"]
    return load_text(text, path)
