"""The one exception the input edge raises: every problem found, as finished messages."""

from __future__ import annotations

from collections.abc import Iterable


class ManifestError(Exception):
    """Bad input: one or more manifests failed to load or validate.

    ``errors`` holds every message (``FILE: Kind ns/name: path: detail``), in input order, so a
    front end can print them all and exit 2; ``str()`` joins them one per line.
    """

    def __init__(self, errors: Iterable[str]) -> None:
        self.errors: tuple[str, ...] = tuple(errors)
        super().__init__("\n".join(self.errors))
