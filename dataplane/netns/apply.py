"""Load rulesets into a lab namespace with the real tools, fed on stdin.

Nothing here builds a shell string: each tool runs as an argument list under
``ip netns exec <namespace>`` and reads the ruleset from stdin, so rule text (which carries
policy names in comments) is only ever data. A non-zero exit raises LabError with the tool's
stderr.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

from dataplane.netns.topology import LabError

TOOL_TIMEOUT = 60.0  # seconds; a ruleset of 100k rules restores in a few seconds


def run_in(netns: str, argv: Sequence[str], stdin: str | None = None) -> str:
    """Run argv inside the namespace; return stdout, raise LabError with stderr on failure."""
    cmd = ["ip", "netns", "exec", netns, *argv]
    try:
        done = subprocess.run(
            cmd, input=stdin, capture_output=True, text=True, timeout=TOOL_TIMEOUT, check=False
        )
    except FileNotFoundError as e:
        raise LabError(f"{argv[0]} is not installed (needed in {netns})") from e
    except subprocess.TimeoutExpired as e:
        raise LabError(f"{' '.join(argv)} timed out in {netns}") from e
    if done.returncode != 0:
        err = " ".join(done.stderr.split()) or f"exit status {done.returncode}"
        raise LabError(f"{' '.join(argv)} failed in {netns}: {err}")
    return done.stdout


def apply_iptables(
    netns: str, ipset_text: str = "", iptables_text: str = "", ip6tables_text: str = ""
) -> None:
    """ipset restore, then iptables-restore/ip6tables-restore --noflush (sets must exist first)."""
    if ipset_text.strip():
        # -exist: re-applying the same sets is not an error.
        run_in(netns, ["ipset", "restore", "-exist"], ipset_text)
    if iptables_text.strip():
        run_in(netns, ["iptables-restore", "--noflush"], iptables_text)
    if ip6tables_text.strip():
        run_in(netns, ["ip6tables-restore", "--noflush"], ip6tables_text)


def apply_nft(netns: str, script: str) -> None:
    """nft -f - : the script is applied atomically or not at all."""
    if script.strip():
        run_in(netns, ["nft", "-f", "-"], script)


def reset_rules(netns: str) -> None:
    """Back to an empty ruleset: drop every table (iptables-nft's too), then every ipset."""
    # iptables here is the nf_tables backend, so one `nft flush ruleset` removes its tables as
    # well; the sets can only be destroyed once no rule references them.
    run_in(netns, ["nft", "flush", "ruleset"])
    run_in(netns, ["ipset", "destroy"])


def flush_conntrack(netns: str) -> None:
    """Forget every tracked connection in the namespace (exit status 1 = table was empty)."""
    try:
        run_in(netns, ["conntrack", "-F"])
    except LabError as e:
        if "0 flow entries" not in str(e):
            raise


def list_conntrack(netns: str) -> str:
    """`conntrack -L` text; the CLI tool avoids pyroute2 Conntrack, which binds at first use."""
    return run_in(netns, ["conntrack", "-L"])
