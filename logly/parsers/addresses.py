"""Address validation and normalisation: the one place a string becomes an IP address."""

from __future__ import annotations

import ipaddress
from functools import lru_cache


@lru_cache(maxsize=65536)
def normalize_ip(text: str) -> str | None:
    """Canonical text of an IPv4/IPv6 address, or None if `text` is not one.

    Zone ids are dropped, `::ffff:1.2.3.4` becomes `1.2.3.4`, brackets are removed. Leading
    zeros in IPv4 (`192.030.0.6`) are refused: libc would read them as octal, so the text names
    no single address; such a value stays a hostname.
    """
    t = text.strip().strip("[]")
    if "%" in t:
        t = t.split("%", 1)[0]
    try:
        addr = ipaddress.ip_address(t)
    except ValueError:
        return None
    if addr.version == 6 and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


def is_hostname(text: str) -> bool:
    if not text or len(text) > 253 or text.startswith(("-", ".")):
        return False
    return all(c.isalnum() or c in "-._" for c in text)
