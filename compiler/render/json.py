"""The JSON form of the IR (``npemu compile -o json``): ``Ruleset.to_dict()``, pretty-printed."""

from __future__ import annotations

import json

from compiler.tables import Ruleset


def render_json(rs: Ruleset) -> str:
    """Stable, indented JSON; non-ASCII kept as is (it is data, and JSON escapes what matters)."""
    return json.dumps(rs.to_dict(), indent=2, ensure_ascii=False) + "\n"
