"""Country/city and ASN of an address from MaxMind DB files the admin installed.

Logly never downloads a database (GeoLite2 needs an account and a licence the user accepts);
it reads the files named by `[reputation] geoip_city` (a City or Country database) and
`geoip_asn`. A file that is absent, of the wrong kind or corrupt is reported once, through
the `logly.geoip` logger, and that half of the lookup is switched off: the other reader and
everything else keep working. A corrupt data section may only show at the first lookup, so
lookup errors switch the reader off the same way.

Lookups go through an LRU cache: attackers come back, and the reputation hook asks once per
address per batch.
"""

from __future__ import annotations

from functools import lru_cache

# `logly ip` loads this module (for the class) and opens no database: nothing else at import
TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any

    Geo = dict[str, Any]

CACHE_SIZE = 65_536


def _not_public(addr: str) -> bool:
    import ipaddress

    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return True
    return not ip.is_global


class GeoIP:
    """`lookup(addr) -> (geo, asn)`, each a small dict or None."""

    def __init__(self, city_path: str | Path | None = None,
                 asn_path: str | Path | None = None) -> None:
        self.problems: list[str] = []
        self._city = self._open(city_path, ("City", "Country"), "geoip_city")
        self._asn = self._open(asn_path, ("ASN",), "geoip_asn")
        self._city_kind = ""
        if self._city is not None:
            self._city_kind = "city" if "City" in self._city.metadata().database_type \
                else "country"
        self.lookup = lru_cache(maxsize=CACHE_SIZE)(self._lookup)

    @property
    def enabled(self) -> bool:
        return self._city is not None or self._asn is not None

    def _report(self, message: str) -> None:
        if message not in self.problems:  # once per instance (the daemon keeps one)
            self.problems.append(message)
            import logging  # here: `logly ip` loads this module and never logs

            logging.getLogger("logly.geoip").warning("%s", message)

    def _open(self, path: str | Path | None, kinds: tuple[str, ...], key: str) -> Any:
        if not path:
            return None
        import geoip2.database
        import maxminddb

        try:
            reader = geoip2.database.Reader(str(path))
        except FileNotFoundError:
            self._report(f"{key}: {path} does not exist; no {key[6:]} data (Logly never "
                         "downloads GeoIP databases: install GeoLite2 files yourself)")
            return None
        except (OSError, ValueError, maxminddb.InvalidDatabaseError) as exc:
            self._report(f"{key}: {path} is not a readable MaxMind DB ({exc}); "
                         f"no {key[6:]} data")
            return None
        kind = reader.metadata().database_type
        if not any(k in kind for k in kinds):
            self._report(f"{key}: {path} is a {kind} database, not {' or '.join(kinds)}; "
                         f"no {key[6:]} data")
            reader.close()
            return None
        return reader

    def _lookup(self, addr: str) -> tuple[Geo | None, Geo | None]:
        if not self.enabled or _not_public(addr):
            return None, None
        return self._geo(addr), self._asn_of(addr)

    def _geo(self, addr: str) -> Geo | None:
        if self._city is None:
            return None
        import geoip2.errors

        try:
            rec = self._city.city(addr) if self._city_kind == "city" \
                else self._city.country(addr)
        except geoip2.errors.AddressNotFoundError:
            return None
        except Exception as exc:  # corrupt data section: switch this reader off, once
            self._report(f"geoip_city: lookup failed, switching City/Country lookups off: "
                         f"{exc}")
            self._city = None
            return None
        out: Geo = {"country_code": rec.country.iso_code, "country": rec.country.name}
        city = getattr(rec, "city", None)
        if city is not None and city.name:
            out["city"] = city.name
        return out if any(out.values()) else None

    def _asn_of(self, addr: str) -> Geo | None:
        if self._asn is None:
            return None
        import geoip2.errors

        try:
            rec = self._asn.asn(addr)
        except geoip2.errors.AddressNotFoundError:
            return None
        except Exception as exc:
            self._report(f"geoip_asn: lookup failed, switching ASN lookups off: {exc}")
            self._asn = None
            return None
        if rec.autonomous_system_number is None:
            return None
        return {"asn": rec.autonomous_system_number, "org": rec.autonomous_system_organization}

    def close(self) -> None:
        for r in (self._city, self._asn):
            if r is not None:
                r.close()
        self._city = self._asn = None
