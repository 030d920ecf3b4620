"""Address sets from blocklist files (plain lists and FireHOL netsets), and the allowlist.

A set is kept as sorted, merged integer intervals per address family; a lookup is one
`bisect` over the interval starts, so its cost grows with log2 of the list (17 steps for
100k entries) and a large list does not slow ingestion. Files are read again when their
modification time changes (checked at most once a second, from the writer's batch hook),
never per lookup.

Accepted lines: an address, a CIDR (`192.0.2.0/24`, `2001:db8::/32`), or a range
(`192.0.2.10-192.0.2.20`); `#` and `;` start comments (FireHOL headers are comments). A line
that is none of these is counted and the first few are reported once; the rest of the file
still loads.
"""

from __future__ import annotations

import os
import time

# `logly ip` loads this module in a process that must answer in 50 ms: the C module rather
# than socket.py (its enum set-up takes milliseconds), logging only when something is said,
# no dataclasses, typing or pathlib, and ipaddress only for the forms inet_pton lacks
from _socket import AF_INET, AF_INET6, inet_pton
from array import array
from bisect import bisect_right

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable
    from pathlib import Path

_AF = {4: AF_INET, 6: AF_INET6}
RELOAD_CHECK_SECONDS = 1.0


def _log():  # type: ignore[no-untyped-def]
    import logging

    return logging.getLogger("logly.blocklist")


def addr_int(text: str) -> tuple[int, int] | None:
    """(family, integer) of an address in canonical text, or None. inet_pton is ~5x faster
    than ipaddress and refuses what ipaddress refuses for stored (normalised) addresses."""
    fam = 6 if ":" in text else 4
    try:
        return fam, int.from_bytes(inet_pton(_AF[fam], text), "big")
    except (OSError, ValueError):
        return None


def parse_entry(text: str) -> tuple[int, int, int]:
    """(family, first, last) of an address, CIDR or range; ValueError if it is none."""
    if "-" in text:
        import ipaddress

        lo_t, hi_t = (p.strip() for p in text.split("-", 1))
        lo, hi = ipaddress.ip_address(lo_t), ipaddress.ip_address(hi_t)
        if lo.version != hi.version or int(hi) < int(lo):
            raise ValueError(f"bad range {text!r}")
        return lo.version, int(lo), int(hi)
    addr, slash, plen_t = text.partition("/")
    fam = 6 if ":" in addr else 4
    bits = 32 if fam == 4 else 128
    try:  # fast path (a 100k-line list loads in well under a second)
        value = int.from_bytes(inet_pton(_AF[fam], addr), "big")
        plen = int(plen_t) if slash else bits
        if plen_t and not plen_t.isdigit():
            raise ValueError
    except (OSError, ValueError):
        value = plen = -1
    if value >= 0 and 0 <= plen <= bits and (fam == 6 or addr.count(".") == 3):
        host = (1 << (bits - plen)) - 1
        # FireHOL lists hold some CIDRs with host bits set; they mean the network
        return fam, value & ~host, (value & ~host) | host
    import ipaddress

    net = ipaddress.ip_network(text, strict=False)  # the exact error, or forms inet_pton lacks
    return net.version, int(net.network_address), int(net.broadcast_address)


class NetSet:
    """Merged intervals per family: starts[i]..ends[i] inclusive, starts sorted."""

    __slots__ = ("v4_starts", "v4_ends", "v6_starts", "v6_ends", "entries")

    def __init__(self, v4_starts: array | None = None, v4_ends: array | None = None,
                 v6_starts: list[int] | None = None, v6_ends: list[int] | None = None,
                 entries: int = 0) -> None:
        self.v4_starts = array("Q") if v4_starts is None else v4_starts
        self.v4_ends = array("Q") if v4_ends is None else v4_ends
        self.v6_starts = [] if v6_starts is None else v6_starts  # 128-bit: plain Python ints
        self.v6_ends = [] if v6_ends is None else v6_ends
        self.entries = entries

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NetSet) and all(
            getattr(self, k) == getattr(other, k) for k in self.__slots__)

    __hash__ = None  # type: ignore[assignment]  # mutable, as the dataclass it was

    def __repr__(self) -> str:
        return (f"NetSet(entries={self.entries}, v4 intervals={len(self.v4_starts)}, "
                f"v6 intervals={len(self.v6_starts)})")

    @classmethod
    def build(cls, intervals: Iterable[tuple[int, int, int]]) -> NetSet:
        by_fam: dict[int, list[tuple[int, int]]] = {4: [], 6: []}
        n = 0
        for fam, lo, hi in intervals:
            by_fam[fam].append((lo, hi))
            n += 1
        out = cls(entries=n)
        for fam, starts, ends in ((4, out.v4_starts, out.v4_ends),
                                  (6, out.v6_starts, out.v6_ends)):
            spans = sorted(by_fam[fam])
            for lo, hi in spans:
                if ends and lo <= ends[-1] + 1:  # overlapping or adjacent: one interval
                    if hi > ends[-1]:
                        ends[-1] = hi
                else:
                    starts.append(lo)
                    ends.append(hi)
        return out

    @classmethod
    def from_strings(cls, items: Iterable[str], what: str = "entry") -> NetSet:
        """For the allowlist: every item must parse (a bad one is a configuration error)."""
        spans = []
        for item in items:
            try:
                spans.append(parse_entry(item.strip()))
            except ValueError:
                raise ValueError(f"{what} {item!r} is not an address, CIDR or range") from None
        return cls.build(spans)

    def _find(self, fam: int, value: int) -> int:
        starts, ends = (self.v4_starts, self.v4_ends) if fam == 4 else (self.v6_starts,
                                                                        self.v6_ends)
        i = bisect_right(starts, value) - 1
        return i if i >= 0 and value <= ends[i] else -1

    def contains_int(self, fam: int, value: int) -> bool:
        return self._find(fam, value) >= 0

    def __contains__(self, addr: str) -> bool:
        key = addr_int(addr)
        return key is not None and self._find(*key) >= 0

    def covers(self, fam: int, lo: int, hi: int) -> bool:
        """True if every address lo..hi is in the set (one merged interval holds them)."""
        i = self._find(fam, lo)
        if i < 0:
            return False
        ends = self.v4_ends if fam == 4 else self.v6_ends
        return hi <= ends[i]

    def __len__(self) -> int:
        return self.entries


def parse_list(text: str, source: str = "<list>") -> tuple[NetSet, list[str]]:
    """A blocklist's text -> (set, problems). Problems name the line; they do not stop it."""
    spans = []
    bad: list[str] = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].split(";", 1)[0].strip()
        if not line:
            continue
        item = line.split()[0]  # some lists add a second column (a count, a date)
        try:
            spans.append(parse_entry(item))
        except ValueError:
            bad.append(f"{source}:{n}: not an address, CIDR or range: {item[:60]!r}")
    return NetSet.build(spans), bad


class Blocklist:
    """One list file: its set as last read, and what the file looked like then."""

    __slots__ = ("path", "name", "nets", "mtime_ns", "size", "loaded", "problems")

    def __init__(self, path: Path, name: str, nets: NetSet | None = None,
                 mtime_ns: int | None = None, size: int | None = None, loaded: bool = False,
                 problems: int = 0) -> None:
        self.path, self.name = path, name
        self.nets = NetSet() if nets is None else nets
        self.mtime_ns, self.size, self.loaded, self.problems = mtime_ns, size, loaded, problems

    def __repr__(self) -> str:
        return f"Blocklist({self.name!r}, {str(self.path)!r}, {len(self.nets)} entries)"


class Blocklists:
    """The configured lists; `refresh()` rereads a file whose mtime or size changed.

    A missing or unreadable file is reported once (and again if it recovers and fails anew)
    and counts as empty: the other lists and ingestion go on.
    """

    def __init__(self, paths: Iterable[str | Path], *,
                 check_seconds: float = RELOAD_CHECK_SECONDS) -> None:
        self.lists: list[Blocklist] = []
        names: dict[str, int] = {}
        for p in paths:
            from pathlib import Path  # here: `logly ip` builds one without lists

            path = Path(p)
            name = path.name.removesuffix(".netset").removesuffix(".ipset")
            name = name.removesuffix(".txt").removesuffix(".list")
            if name in names:  # two files with one name: keep them apart
                names[name] += 1
                name = f"{name}#{names[name]}"
            else:
                names[name] = 1
            self.lists.append(Blocklist(path, name))
        self.check_seconds = check_seconds
        self.generation = 0  # moves whenever any list's content changes
        self._checked = 0.0
        self._reported: set[tuple[str, str]] = set()
        self.refresh(force=True)

    def _warn_once(self, path: Path, message: str) -> None:
        key = (str(path), message)
        if key not in self._reported:
            self._reported.add(key)
            _log().warning("%s", message)

    def refresh(self, force: bool = False) -> bool:
        """Reload changed files; returns True if any list changed."""
        now = time.monotonic()
        if not force and now - self._checked < self.check_seconds:
            return False
        self._checked = now
        changed = False
        for bl in self.lists:
            try:
                st = os.stat(bl.path)
            except OSError as exc:
                self._warn_once(bl.path, f"blocklist {bl.path}: {exc.strerror}; "
                                         "treated as empty")
                if bl.loaded:  # the file went away: its entries no longer apply
                    bl.nets, bl.loaded, changed = NetSet(), False, True
                bl.mtime_ns = bl.size = None
                continue
            if st.st_mtime_ns == bl.mtime_ns and st.st_size == bl.size:
                continue
            try:
                text = bl.path.read_text(encoding="utf-8", errors="replace")
            except OSError as exc:
                self._warn_once(bl.path, f"blocklist {bl.path}: {exc.strerror}; "
                                         "treated as empty")
                continue
            bl.nets, bad = parse_list(text, str(bl.path))
            bl.mtime_ns, bl.size, bl.loaded = st.st_mtime_ns, st.st_size, True
            bl.problems = len(bad)
            changed = True
            self._reported = {k for k in self._reported if k[0] != str(bl.path)}
            if bad:
                self._warn_once(bl.path, f"blocklist {bl.path}: {len(bad)} lines skipped, "
                                         "e.g. " + "; ".join(bad[:3]))
            _log().info("blocklist %s: %d entries from %s", bl.name, len(bl.nets), bl.path)
        if changed:
            self.generation += 1
        return changed

    def lookup(self, addr: str) -> list[str]:
        """Names of the lists that hold `addr` (canonical address text)."""
        key = addr_int(addr)
        if key is None:
            return []
        return [bl.name for bl in self.lists if bl.loaded and bl.nets.contains_int(*key)]

    def lookup_int(self, fam: int, value: int) -> list[str]:
        return [bl.name for bl in self.lists if bl.loaded and bl.nets.contains_int(fam, value)]

    def __len__(self) -> int:
        return sum(len(bl.nets) for bl in self.lists)

    def status(self) -> list[dict[str, object]]:
        return [{"name": bl.name, "path": str(bl.path), "loaded": bl.loaded,
                 "entries": len(bl.nets), "skipped_lines": bl.problems} for bl in self.lists]
