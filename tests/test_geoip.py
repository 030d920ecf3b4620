"""GeoIP/ASN on MaxMind's own test databases (../shared/geoip, known answers in its README):
lookups, a Country file in place of City, absent / wrong-kind / corrupt files reported once
while the rest works, the cache, and `logly ip` showing what the hook stored."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from logly.config import load_config
from logly.store.sqlite import SQLiteStore
from logly.tracer.geoip import GeoIP
from logly.tracer.reputation import make_hook
from tests.test_reputation import LogWriter, ensure_ip_commands, ingest

GEO = Path(__file__).resolve().parents[2] / "shared" / "geoip"
if not GEO.is_dir():
    GEO = Path("/work/shared/geoip")
CITY = GEO / "GeoLite2-City-Test.mmdb"
COUNTRY = GEO / "GeoLite2-Country-Test.mmdb"
ASN = GEO / "GeoLite2-ASN-Test.mmdb"
BROKEN = GEO / "GeoIP2-City-Test-Broken-Double-Format.mmdb"

pytestmark = pytest.mark.skipif(not CITY.is_file(), reason="MaxMind test databases not found")


@pytest.mark.parametrize("addr, country, city", [
    ("81.2.69.142", "GB", "London"),
    ("89.160.20.112", "SE", "Linköping"),
    ("216.160.83.56", "US", "Milton"),
    ("2001:218::1", "JP", None),
])
def test_city_known_answers(addr: str, country: str, city: str | None) -> None:
    geo, _ = GeoIP(CITY, None).lookup(addr)
    assert geo is not None and geo["country_code"] == country
    assert geo.get("city") == city


@pytest.mark.parametrize("addr, number, org", [
    ("1.128.0.0", 1221, "Telstra Pty Ltd"),
    ("12.81.92.0", 7018, "AT&T Services"),
    ("2600:6000::1", 237, "Merit Network Inc."),
])
def test_asn_known_answers(addr: str, number: int, org: str) -> None:
    _, asn = GeoIP(None, ASN).lookup(addr)
    assert asn == {"asn": number, "org": org}


def test_country_database_in_place_of_city() -> None:
    geo, _ = GeoIP(COUNTRY, None).lookup("81.2.69.142")
    assert geo == {"country_code": "GB", "country": "United Kingdom"}


def test_not_found_private_and_documentation_addresses_give_nothing() -> None:
    g = GeoIP(CITY, ASN)
    assert g.lookup("10.0.0.1") == (None, None)
    assert g.lookup("203.0.113.7") == (None, None)  # TEST-NET-3: not global, not looked up
    assert g.lookup("2001:db8::1") == (None, None)
    assert g.lookup("8.8.8.8") == (None, None)  # global, but not in the test data
    assert g.problems == []


def test_absent_file_reported_once_and_the_other_reader_works(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="logly.geoip"):
        g = GeoIP(tmp_path / "GeoLite2-City.mmdb", ASN)
        for _ in range(3):
            assert g.lookup("1.128.0.0")[1]["asn"] == 1221
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 1 and "does not exist" in msgs[0] and "never" in msgs[0]


def test_not_a_database_and_wrong_kind_are_reported(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    junk = tmp_path / "junk.mmdb"
    junk.write_bytes(b"this is not a MaxMind DB\n" * 100)
    with caplog.at_level(logging.WARNING, logger="logly.geoip"):
        g = GeoIP(junk, CITY)  # an ASN reader given a City file
    assert not g.enabled
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 2
    assert "not a readable MaxMind DB" in msgs[0]
    assert "GeoLite2-City database, not ASN" in msgs[1]
    assert g.lookup("81.2.69.142") == (None, None)


def test_corrupt_data_section_switches_city_off_once_and_asn_goes_on(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="logly.geoip"):
        g = GeoIP(BROKEN, ASN)  # opens fine: the damage shows at the first lookup
        first = g.lookup("89.160.20.112")
        second = g.lookup("216.160.83.56")
    assert first == (None, {"asn": 29518, "org": "Bredband2 AB"})
    assert second[0] is None and second[1]["asn"] == 209
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 1 and "switching City/Country lookups off" in msgs[0]


def test_lookups_are_cached() -> None:
    g = GeoIP(CITY, ASN)
    for _ in range(5):
        g.lookup("89.160.20.112")
    info = g.lookup.cache_info()
    assert info.misses == 1 and info.hits == 4


def test_hook_stores_geo_and_ip_shows_it(tmp_path: Path, cli: Callable) -> None:
    ensure_ip_commands()
    cfg = tmp_path / "logly.toml"
    cfg.write_text(f'[reputation]\ngeoip_city = "{CITY}"\ngeoip_asn = "{ASN}"\n')
    w = LogWriter(datetime.now(UTC) - timedelta(hours=1))
    w.valid_user_failures("89.160.20.112", "root", 2)
    w.valid_user_failures("2001:218::1", "root", 1)
    log = tmp_path / "auth.log"
    log.write_text("\n".join(w.auth) + "\n")
    store = SQLiteStore(tmp_path / "g.db")
    store.init()
    ingest(store, [log], [make_hook(load_config(cfg))])
    # once stored, `logly ip` needs no GeoIP file: it shows the stored answer
    cfg = tmp_path / "plain.toml"
    cfg.write_text("")
    r = cli("ip", "89.160.20.112", "--json", "--db", str(store.path), "--config", str(cfg))
    rep = json.loads(r.out)
    assert rep["geo"] == {"country_code": "SE", "country": "Sweden", "city": "Linköping"}
    assert rep["asn"] == {"asn": 29518, "org": "Bredband2 AB"}
    r = cli("ip", "89.160.20.112", "--db", str(store.path), "--config", str(cfg))
    assert "Linköping, Sweden, SE" in r.out and "AS29518 Bredband2 AB" in r.out
    r = cli("ips", "--json", "--db", str(store.path), "--config", str(cfg))
    by = {row["address"]: row for row in json.loads(r.out)}
    assert by["89.160.20.112"]["country"] == "SE" and by["2001:218::1"]["country"] == "JP"
    assert by["89.160.20.112"]["asn"] == 29518


def test_missing_geoip_files_do_not_stop_ingestion(tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    city = tmp_path / "city.mmdb"
    shutil.copy(BROKEN, city)
    cfg = tmp_path / "logly.toml"
    cfg.write_text(f'[reputation]\ngeoip_city = "{city}"\ngeoip_asn = "{tmp_path / "no.mmdb"}"\n')
    w = LogWriter(datetime.now(UTC) - timedelta(hours=1))
    for ip in ("89.160.20.112", "81.2.69.142", "216.160.83.56"):
        w.valid_user_failures(ip, "root", 2)
    log = tmp_path / "auth.log"
    log.write_text("\n".join(w.auth) + "\n")
    store = SQLiteStore(tmp_path / "g.db")
    store.init()
    with caplog.at_level(logging.WARNING, logger="logly.geoip"):
        assert ingest(store, [log], [make_hook(load_config(cfg))]) == 12
    assert len([r for r in caplog.records if r.name == "logly.geoip"]) == 2
    import sqlite3

    rows = sqlite3.connect(store.path).execute(
        "SELECT count(*), count(geo), sum(base_score > 0) FROM ip_reputation").fetchone()
    assert rows == (3, 0, 3)
