"""Renderers: Ruleset to iptables-restore, ipset restore, nft, text and JSON."""
