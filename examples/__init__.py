"""Bundled example scenarios (manifests and captures), shipped with the package."""
