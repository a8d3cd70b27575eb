"""compiler.manifests: files, directories, stdin, YAML/JSON, List wrappers and hostile input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from compiler import manifests
from compiler.manifests import load_paths, load_text
from compiler.model import Origin


def test_multi_document_yaml_keeps_document_index_and_line() -> None:
    text = "kind: A\n---\n---\n# only a comment\n---\nkind: B\nx: 1\n"
    objs, errs = load_text(text, "m.yaml")
    assert errs == []
    assert [(o.obj["kind"], o.origin, o.line) for o in objs] == [
        ("A", Origin("m.yaml", 0), 1),
        ("B", Origin("m.yaml", 3), 6),
    ]


def test_list_wrappers_yield_items_with_their_lines() -> None:
    text = (
        "apiVersion: v1\nkind: List\nitems:\n"
        "- apiVersion: v1\n  kind: Pod\n  metadata: {name: a}\n"
        "- apiVersion: v1\n  kind: Node\n  metadata: {name: n}\n"
        "metadata: {resourceVersion: ''}\n"
    )
    objs, errs = load_text(text, "l.yaml")
    assert errs == []
    assert [(o.obj["kind"], o.item, o.line) for o in objs] == [("Pod", 0, 4), ("Node", 1, 7)]


def test_typed_list_items_inherit_kind_and_api_version() -> None:
    objs, errs = load_text(
        '{"kind": "PodList", "apiVersion": "v1", "items": [{"metadata": {"name": "a"}}]}', "p.json"
    )
    assert errs == []
    assert objs[0].obj == {"kind": "Pod", "apiVersion": "v1", "metadata": {"name": "a"}}
    assert objs[0].line is None and objs[0].item == 0


def test_empty_list_and_empty_file() -> None:
    assert load_text("kind: List\napiVersion: v1\nitems: []\n", "e.yaml") == ([], [])
    assert load_text("", "e.yaml") == ([], [])
    assert load_text("# nothing\n", "e.yaml") == ([], [])


def test_malformed_yaml_reports_line_and_column() -> None:
    _, errs = load_text("a: 1\nb: [1, 2\nc: 3\n", "bad.yaml")
    assert errs == [
        "bad.yaml:3:2: did not find expected ',' or ']' "
        "(while parsing a flow sequence at line 2, column 4)"
    ]


def test_malformed_yaml_mapping_values() -> None:
    _, errs = load_text("a: b: c\n", "bad.yaml")
    # libyaml says "in this context", PyYAML's Python scanner "here".
    assert len(errs) == 1 and errs[0].startswith("bad.yaml:1:5: mapping values are not allowed")


def test_duplicate_keys_are_errors_with_position() -> None:
    text = "metadata:\n  name: a\n  labels: {}\n  name: b\n---\nx: 1\nx: 2\n"
    _, errs = load_text(text, "d.yaml")
    assert errs == [
        'd.yaml:4:3: duplicate key "name" (first defined at line 2, column 3)',
        'd.yaml:7:1: duplicate key "x" (first defined at line 6, column 1)',
    ]


def test_duplicate_keys_in_json_are_located() -> None:
    _, errs = load_text('{\n  "kind": "Pod",\n  "kind": "Node"\n}', "d.json")
    assert errs == ['d.json:3:3: duplicate key "kind" (first defined at line 2, column 3)']


def test_merge_keys_are_not_duplicates() -> None:
    objs, errs = load_text("base: &b {a: 1}\nx:\n  <<: *b\n  a: 2\n", "m.yaml")
    assert errs == []
    assert objs[0].obj["x"] == {"a": 2}


def test_malformed_json() -> None:
    _, errs = load_text('{"kind": "Pod",}', "x.json")
    assert errs == ["x.json:1:16: Expecting property name enclosed in double quotes"]


def test_yaml_flow_mapping_is_not_mistaken_for_json() -> None:
    objs, errs = load_text("{kind: Pod, metadata: {name: a}}", "x.yaml")
    assert errs == [] and objs[0].obj["kind"] == "Pod"


def test_timestamps_stay_strings() -> None:
    objs, _ = load_text(
        "creationTimestamp: 2024-01-02T03:04:05Z\nodd: 2024-13-45\nq: =\n", "t.yaml"
    )
    assert objs[0].obj == {
        "creationTimestamp": "2024-01-02T03:04:05Z",
        "odd": "2024-13-45",
        "q": "=",
    }


def test_unsafe_tags_are_refused() -> None:
    _, errs = load_text("x: !!python/object/apply:os.system [echo]\n", "u.yaml")
    assert len(errs) == 1 and errs[0].startswith("u.yaml:1:4: could not determine a constructor")


def test_alias_bomb_is_refused() -> None:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    objs, errs = load_text("\n".join(lines), "bomb.yaml")
    assert objs == []
    assert len(errs) == 1
    assert errs[0].startswith("bomb.yaml:1:1: YAML aliases expand this document to ")
    assert errs[0].endswith("(at most 1000000 added nodes are allowed)")


def test_modest_aliases_are_fine() -> None:
    objs, errs = load_text("a: &x {k: v}\nb: *x\nc: *x\n", "ok.yaml")
    assert errs == [] and objs[0].obj["c"] == {"k": "v"}


def test_recursive_alias_is_refused() -> None:
    _, errs = load_text("a: &a [*a]\n", "r.yaml")
    assert errs == ["r.yaml:1:1: recursive YAML alias (a node contains itself)"]


@pytest.mark.parametrize(
    "text",
    [
        "[" * 100_000 + "]" * 100_000,
        "- " * 100_000 + "x",
        "a:\n" + "".join(" " * i + "b:\n" for i in range(1, 2000)),
    ],
)
def test_deep_nesting_fails_cleanly(text: str) -> None:
    objs, errs = load_text(text, "deep.yaml")
    assert objs == []
    assert len(errs) == 1 and "nested too deeply" in errs[0]


def test_size_limit(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(manifests, "MAX_FILE_BYTES", 100)
    big = tmp_path / "big.yaml"
    big.write_text("a: " + "x" * 200)
    _, errs = load_paths([str(big)])
    assert errs == [f"{big}: 203 bytes, larger than 0 MiB, refused"]
    _, errs = load_text("a: " + "x" * 200, "<stdin>")
    assert errs == ["<stdin>: larger than 0 MiB, refused"]


def test_huge_integer_is_an_error_not_a_crash() -> None:
    _, errs = load_text("port: " + "9" * 5000 + "\n", "i.yaml")
    assert len(errs) == 1 and errs[0].startswith("i.yaml: document 0: Exceeds the limit")


def test_directories_recurse_in_sorted_order(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.yml").write_text("kind: Z\n")
    (tmp_path / "b" / "a.json").write_text(json.dumps({"kind": "A"}))
    (tmp_path / "a.yaml").write_text("kind: First\n")
    (tmp_path / "notes.txt").write_text("kind: Ignored\n")
    objs, errs = load_paths([str(tmp_path)])
    assert errs == []
    assert [o.obj["kind"] for o in objs] == ["First", "A", "Z"]
    assert objs[1].origin.file == str(tmp_path / "b" / "a.json")


def test_explicit_file_of_any_extension_and_stdin(tmp_path: Path) -> None:
    f = tmp_path / "manifest.txt"
    f.write_text("kind: File\n")
    objs, errs = load_paths([str(f), "-"], stdin_text="kind: Stdin\n")
    assert errs == []
    assert [(o.obj["kind"], o.origin.file) for o in objs] == [
        ("File", str(f)),
        ("Stdin", "<stdin>"),
    ]


def test_missing_paths_and_missing_stdin(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    _, errs = load_paths([str(tmp_path / "nope.yaml"), "-", str(tmp_path / "empty")])
    assert errs == [
        f"{tmp_path / 'nope.yaml'}: No such file or directory",
        "<stdin>: '-' given but no standard input text",
        f"{tmp_path / 'empty'}: no .yaml, .yml, .json files in directory",
    ]


def test_errors_in_one_file_do_not_hide_others(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("a: [\n")
    (tmp_path / "b.yaml").write_text("kind: Good\n")
    (tmp_path / "c.yaml").write_text("x: 1\nx: 2\n")
    objs, errs = load_paths([str(tmp_path)])
    assert [o.obj.get("kind") for o in objs] == ["Good", None]
    assert len(errs) == 2
    assert errs[0].startswith(f"{tmp_path / 'a.yaml'}:2:1: ")
    assert (
        errs[1]
        == f'{tmp_path / "c.yaml"}:2:1: duplicate key "x" (first defined at line 1, column 1)'
    )


def test_not_utf8(tmp_path: Path) -> None:
    f = tmp_path / "x.yaml"
    f.write_bytes(b"kind: \xff\n")
    assert load_paths([str(f)])[1] == [f"{f}: not UTF-8 text (byte 6)"]


def test_byte_order_mark_is_ignored() -> None:
    objs, errs = load_text("\ufeffkind: A\n", "bom.yaml")
    assert errs == [] and objs[0].obj == {"kind": "A"}
