"""``ipset restore`` input for a Ruleset's sets.

Each set is built under a temporary name and swapped in, so a re-apply replaces its members
atomically (a live iptables rule never sees a half-filled set) and is idempotent:

    create NPEMU-S-abc hash:net family inet maxelem 1048576 -exist   # no-op when it exists
    create npemu-t-0123456789ab hash:net family inet maxelem 1048576 -exist
    flush npemu-t-0123456789ab                                       # left over by a failed run?
    add npemu-t-0123456789ab 10.0.0.0/8
    add npemu-t-0123456789ab 10.1.0.0/16 nomatch
    swap npemu-t-0123456789ab NPEMU-S-abc
    destroy npemu-t-0123456789ab

Traps handled: ``create -exist`` fails when the existing set was made with other options (maxelem,
extensions), so every set is created with the same fixed options; ``hash:net`` refuses a /0
prefix, so /0 becomes its two /1 halves (unless a half is listed itself, which is more specific
and decides); ``hash:ip`` entries written as /32 or /128 become plain addresses.
"""

from __future__ import annotations

import hashlib

from compiler.render._common import (
    check_set_name,
    clean_text,
    hash_ip_entries,
    set_networks,
    truncate_utf8,
)
from compiler.tables import IPSet, Ruleset

# Fixed for every set so that ``create -exist`` stays a no-op as sets grow (memory is allocated
# as entries are added, not by maxelem).
MAXELEM = 1 << 20
TEMP_PREFIX = "npemu-t-"


def temp_set_name(s: IPSet) -> str:
    """The name a set is built under before the swap. It depends on the type and family too,
    because a leftover temporary set of another type would make ``create -exist`` + ``add`` fail."""
    digest = hashlib.sha256(f"{s.name}|{s.kind}|{s.family}".encode()).hexdigest()
    return TEMP_PREFIX + digest[:12]


def _halves(net):
    """hash:net cannot store a /0: its two /1 halves cover the same addresses."""
    return list(net.subnets(prefixlen_diff=1)) if net.prefixlen == 0 else [net]


def hash_net_lines(s: IPSet) -> list[str]:
    """The ``ENTRY`` / ``ENTRY nomatch`` member strings of a hash:net set, /0 split."""
    entries, nomatch = set_networks(s)
    listed = set(entries) | set(nomatch)
    members: dict[str, None] = {}
    for nets, suffix in ((nomatch, " nomatch"), (entries, "")):
        for net in nets:
            for part in _halves(net):
                if part is not net and part in listed:
                    continue  # the /1 listed itself is more specific than the /0 and decides
                members[f"{part}{suffix}"] = None
    # A /0 entry split next to a /0 nomatch split gives the same /1 both ways: nomatch wins, as
    # it did for the /0s (set_networks already dropped the entry /0).
    return list(members)


def set_members(s: IPSet) -> list[str]:
    """What ``add`` lines carry for ``s`` (after the /0 and /32 fix-ups)."""
    if s.kind == "hash:ip":
        return hash_ip_entries(s)
    if s.kind == "hash:net":
        return hash_net_lines(s)
    raise ValueError(f"set {s.name}: unknown kind {s.kind!r}")


def render_ipset(rs: Ruleset) -> str:
    """``ipset restore`` text creating (or atomically refilling) every set of ``rs``."""
    lines = [
        "# npemu ipsets: load with `ipset restore < FILE` before the iptables rules",
        f"# {len(rs.sets)} set(s)",
    ]
    for s in rs.sets.values():
        check_set_name(s.name)
        if s.family not in (4, 6):
            raise ValueError(f"set {s.name}: family must be 4 or 6")
        members = set_members(s)
        if len(members) > MAXELEM:
            raise ValueError(f"set {s.name}: {len(members)} members exceed maxelem {MAXELEM}")
        opts = f"{s.kind} family {'inet' if s.family == 4 else 'inet6'} maxelem {MAXELEM}"
        tmp = temp_set_name(s)
        if s.comment:
            # Set-level comments have no kernel form; a `#` line is skipped by ipset restore.
            lines.append("# " + truncate_utf8(clean_text(s.comment), 240))
        lines += [f"create {s.name} {opts} -exist", f"create {tmp} {opts} -exist", f"flush {tmp}"]
        lines += [f"add {tmp} {m}" for m in members]
        lines += [f"swap {tmp} {s.name}", f"destroy {tmp}"]
    return "\n".join(lines) + "\n"


def render_ipset_destroy(names: list[str]) -> str:
    """``ipset restore`` text destroying sets (e.g. ones a previous ruleset had); run it after
    the iptables rules that referenced them are gone."""
    for n in names:
        check_set_name(n)
    return "".join(f"destroy {n}\n" for n in names)
