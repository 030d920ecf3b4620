"""Syslog-style line headers: time, host, program and pid in front of the message.

Handled: RFC 3164 (`Mar  3 10:00:00 host prog[pid]: msg`, year-less), Debian 12's ISO form
(`2026-11-24T10:00:00.123456+01:00 host prog[pid]: msg`), `journalctl -o short-iso`
(`+0100`), RFC 5424 (`<34>1 TS host app procid msgid [SD] msg`), fail2ban's own log
(`2026-11-24 10:00:00,123 fail2ban.actions [12]: NOTICE [sshd] Ban 1.2.3.4`), and the common
oddities seen in the corpora: no host, `prog:` without pid, `prog[pid]` without colon,
`<auth.info>` / `<10.5>` facility tags, busybox `auth.info` tokens, journal lines with no time.

Times without a zone are local time in `tz`; year-less times take the year that puts them at or
before the reference moment (the file's mtime, or now) plus a day, so a December line read in
January lands in the previous year. Everything comes out as UTC text with microseconds.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import NamedTuple

MONTHS = {m: i for i, m in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)}

# Fast path: the two forms a Debian server writes. An optional part is "(?:X|)", the exact
# equivalent of "(?:X)?" that sre runs as a cheap branch instead of a general repeat.
_FAST_3164 = re.compile(
    r"([A-Z][a-z]{2} [ \d]?\d \d\d:\d\d:\d\d) ([^\s\[\]]+) ([^\s\[\]:]+)(?:\[(\d+)\]|): ?(.*)",
    re.S,
)
_FAST_ISO = re.compile(
    r"(\d{4}-\d\d-\d\d)T(\d\d:\d\d:\d\d)(?:\.(\d+)|)(?:(Z|[+-]\d\d:?\d\d)|) ([^\s\[\]]+) "
    r"([^\s\[\]:]+)(?:\[(\d+)\]|): ?(.*)",
    re.S,
)
_F2B = re.compile(
    r"(\d{4}-\d\d-\d\d) (\d\d:\d\d:\d\d),(\d+) (fail2ban\.\w+)\s*(?:\[(\d+)\]|): ?(.*)", re.S
)
# RFC 5424 structured data; a quoted value may hold an unescaped "]" (seen in the wild)
_SD = r'(-|(?:\[(?:[^\]"\\]|\\.|"(?:[^"\\]|\\.)*")*\])+)'
_5424 = re.compile(
    r"(?:<(\d{1,3})>)?1 (\d{4}-\d\d-\d\d)T(\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:?\d\d)? "
    r"(\S+) (\S+) (\S+) (\S+) " + _SD + r" ?(.*)",
    re.S,
)
# Slow path: a time, then a tag in any of the shapes that fail2ban/sshguard samples show.
_TIME_3164 = re.compile(r"\[?([A-Z][a-z]{2}) +(\d{1,2}) (\d\d:\d\d:\d\d)\]? +")
_TIME_ISO = re.compile(
    r"(\d{4}-\d\d-\d\d)[T ](\d\d:\d\d:\d\d)(?:[.,](\d+))?( ?(?:Z|UTC|GMT|[+-]\d\d:?\d\d))? +"
)
_TAG_PARTS = (
    r"(?:<[\w.]+> +)?"  # <auth.info>, <10.5>
    r"(?:(?P<host>[^\s\[\]<>:]+) +)??"
    r"(?:[a-z]+\.[a-z]+:? +)?"  # busybox / socklog facility.level
    r"(?:\[\s*\d+\.\d+\] +)?"  # kernel uptime in front of a tag
    r"(?:@\S+ +)?"  # @vserver
    r"\[?(?P<prog>[A-Za-z_/][\w./-]*)(?:\([\w.]+\))?\]?(?:\[(?P<pid>\d+)\])?"
)
# A tag ends in a colon or a [pid]; without either, only a line that had a time is accepted.
_TAG = re.compile(_TAG_PARTS + r"(?:(?<=\]):?|:)(?: \[ID \d+ [\w.]+\])? *(?P<msg>.*)", re.S)
_TAG_LOOSE = re.compile(_TAG_PARTS + r"(?: \[ID \d+ [\w.]+\])? +(?P<msg>.*)", re.S)
_SOLARIS_ID = re.compile(r"\[ID \d+ [\w.]+\] *")
_FACILITY = re.compile(r"[a-z]+\.[a-z]+: +")
_5424_BARE = re.compile(r"(\S+) (\S+) (\d+|-) (\S+) " + _SD + r" ?(.*)", re.S)
_KERNEL_UPTIME = re.compile(r"\[\s*\d+\.\d+\] ?")


class Header(NamedTuple):
    timestamp: str | None  # ISO 8601 UTC, microseconds, "Z"
    host: str | None
    program: str | None
    pid: int | None
    message: str
    priority: int | None = None
    # set when the tag had neither colon nor pid: the first word may be message text, and this
    # is the whole text after the time, to try as a bare message when the tag reading fails
    bare: str | None = None


def _tz_offset(text: str | None) -> timezone | None:
    if not text:
        return None
    text = text.strip()
    if text in ("Z", "UTC", "GMT"):
        return UTC
    sign = -1 if text[0] == "-" else 1
    digits = text[1:].replace(":", "")
    return timezone(sign * timedelta(hours=int(digits[:2]), minutes=int(digits[2:4])))


class HeaderParser:
    """Splits headers; holds the clock and zone assumptions and caches time conversions."""

    def __init__(
        self,
        tz: tzinfo | None = None,
        reference: datetime | None = None,
        year: int | None = None,
    ) -> None:
        self.tz = tz or datetime.now().astimezone().tzinfo
        ref = reference or datetime.now(UTC)
        self.reference = ref.astimezone(self.tz)
        self.year = year
        self._cache: dict[str, str] = {}

    # ---- time ---------------------------------------------------------------------------------
    def _utc(self, dt: datetime) -> str:
        return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")

    def time_3164(self, mon: str, day: str, clock: str) -> str | None:
        key = f"{mon} {day:>2} {clock}"
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        month = MONTHS.get(mon)
        if month is None:
            return None
        h, m, s = (int(x) for x in clock.split(":"))
        year = self.year or self.reference.year
        try:
            dt = datetime(year, month, int(day), h, m, s, tzinfo=self.tz)
            if self.year is None and dt > self.reference + timedelta(days=1):
                dt = dt.replace(year=year - 1)
        except ValueError:  # Feb 29 in a non-leap year, hour 25 ...
            return None
        out = self._utc(dt) + ".000000Z"
        self._remember(key, out)
        return out

    def time_iso(self, date: str, clock: str, frac: str | None, zone: str | None) -> str | None:
        key = f"{date}T{clock}{zone or ''}"
        base = self._cache.get(key)
        if base is None:
            try:
                tzi = _tz_offset(zone) or self.tz
                dt = datetime(int(date[:4]), int(date[5:7]), int(date[8:10]),
                              int(clock[:2]), int(clock[3:5]), int(clock[6:8]), tzinfo=tzi)
            except ValueError:
                return None
            base = self._utc(dt)
            self._remember(key, base)
        return f"{base}.{(frac or '')[:6].ljust(6, '0')}Z"

    def _remember(self, key: str, value: str) -> None:
        if len(self._cache) > 16_384:
            self._cache.clear()
        self._cache[key] = value

    # ---- headers ------------------------------------------------------------------------------
    def parse(self, line: str) -> Header | None:
        c = line[:1]
        if c.isalpha():
            m = _FAST_3164.match(line)
            if m:
                stamp, host, prog, pid, msg = m.groups()
                ts = self._cache.get(stamp)
                if ts is None:
                    mon, day, clock = stamp.split()
                    ts = self.time_3164(mon, day, clock)
                if ts is not None:
                    if "/" in prog:
                        prog = _prog(prog)
                    if msg[:4] == "[ID ":  # Solaris: "sshd[1]: [ID 800047 auth.info] msg"
                        mi = _SOLARIS_ID.match(msg)
                        if mi:
                            msg = msg[mi.end():]
                    return Header(ts, host, prog, int(pid) if pid else None, msg)
        elif c.isdigit():
            m = _FAST_ISO.match(line)
            if m:
                ts = self.time_iso(m[1], m[2], m[3], m[4])
                if ts is not None:
                    pid = m[7]
                    return Header(ts, m[5], _prog(m[6]), int(pid) if pid else None, m[8])
            m = _F2B.match(line)
            if m:
                ts = self.time_iso(m[1], m[2], m[3][:3], None)
                pid = m[5]
                return Header(ts, None, m[4], int(pid) if pid else None, m[6])
        return self._slow(line)

    def _slow(self, line: str) -> Header | None:
        prio = None
        rest = line.lstrip()
        if rest.startswith("<"):
            m5 = _5424.match(rest)
            if m5:
                ts = self.time_iso(m5[2], m5[3], m5[4], m5[5])
                pid = m5[8]
                return Header(
                    ts,
                    None if m5[6] == "-" else m5[6],
                    None if m5[7] == "-" else _prog(m5[7]),
                    int(pid) if pid.isdigit() else None,
                    m5[11],
                    int(m5[1]) if m5[1] else None,
                )
            mp = re.match(r"<(\d{1,3})>", rest)
            if mp:
                prio = int(mp[1])
                rest = rest[mp.end():]
        elif rest.startswith("1 "):
            m5 = _5424.match(rest)
            if m5:
                ts = self.time_iso(m5[2], m5[3], m5[4], m5[5])
                pid = m5[8]
                return Header(ts, None if m5[6] == "-" else m5[6], _prog(m5[7]),
                              int(pid) if pid.isdigit() else None, m5[11])
        ts: str | None = None
        m = _TIME_3164.match(rest)
        if m:
            ts = self.time_3164(m[1], m[2], m[3])
            rest = rest[m.end():]
        else:
            m = _TIME_ISO.match(rest)
            if m:
                ts = self.time_iso(m[1], m[2], m[3], m[4])
                rest = rest[m.end():]
                # socklog: "TS auth.info: [May 27 04:31:28 ]sshd[1]: msg"
                mf = _FACILITY.match(rest)
                if mf:
                    rest = rest[mf.end():]
                    mi = _TIME_3164.match(rest)
                    if mi:
                        rest = rest[mi.end():]
                else:
                    mb = _5424_BARE.match(rest)
                    if mb and mb[4] == "-":
                        pid = mb[3]
                        return Header(ts, mb[1], _prog(mb[2]),
                                      int(pid) if pid.isdigit() else None, mb[6], prio)
        mt = _TAG.match(rest)
        bare = None
        if mt is None and ts is not None:
            mt = _TAG_LOOSE.match(rest)
            bare = rest
        if mt:
            pid = mt["pid"]
            host = mt["host"]
            if ts is None and not pid:
                return None
            return Header(ts, host, _prog(mt["prog"]), int(pid) if pid else None,
                          mt["msg"], prio, None if pid else bare)
        if ts is not None:  # a time and then a bare message (sshguard's "Banner formats")
            return Header(ts, None, None, None, rest, prio)
        return None


def _prog(name: str) -> str:
    if "/" in name:
        name = name.rsplit("/", 1)[1]
    return name


def strip_kernel_uptime(message: str) -> str:
    m = _KERNEL_UPTIME.match(message)
    return message[m.end():] if m else message
