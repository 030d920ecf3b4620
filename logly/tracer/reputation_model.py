"""The reputation model from rules/reputation.toml: counters, features, verdicts, decay.

Pure functions of an address's state, no I/O after loading, so the batch hook, the full
recompute and `logly ip` all score with exactly the same code. The file's layout and the
reasoning behind it are in the file itself and in docs/reputation.md.
"""

from __future__ import annotations

import math
import os

from logly.configread import path_text, read_toml, shipped_rules_path
from logly.errors import ConfigError

# `logly ip` loads this in a process that must answer in milliseconds: no dataclasses, typing
# or pathlib (see logly/configread.py)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from pathlib import Path
    from typing import Any

MODEL_FILE = "reputation.toml"
# counts the code derives from the state (every counter name is a count too)
DERIVED = ("users", "spray", "ports", "banned", "recidive", "compromise", "blocklists", "hosts")
VERDICTS = ("malicious", "suspicious", "low", "clean", "allowlisted")
_DURATION = r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$"
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: Any, where: str) -> float:
    """`7d`, `36h`, `90m` or a number of seconds -> seconds (> 0)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (m := _re().match(_DURATION, value)):
        seconds = float(m[1]) * _SECONDS[m[2]]
    else:
        raise ConfigError(f"{where}: {value!r} is not a duration",
                          hint="write e.g. \"7d\", \"36h\", \"90m\" or seconds as a number")
    if seconds <= 0:
        raise ConfigError(f"{where}: the duration must be positive, not {value!r}")
    return seconds


def _re():  # type: ignore[no-untyped-def]
    import re  # loaded anyway by json; compiled only when a duration is read

    return re


class Feature:
    """One [feature.NAME] table: `points` per unit of `count` above `free`, up to `cap`."""

    __slots__ = ("name", "count", "points", "cap", "free", "text")

    def __init__(self, name: str, count: str, points: float, cap: float | None, free: int,
                 text: str) -> None:
        self.name, self.count, self.points = name, count, points
        self.cap, self.free, self.text = cap, free, text

    def _key(self) -> tuple:
        return (self.name, self.count, self.points, self.cap, self.free, self.text)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Feature) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return ("Feature(" + ", ".join(f"{k}={v!r}" for k, v in zip(
            self.__slots__, self._key(), strict=True)) + ")")


class Model:
    """The model's numbers and names; `from_dict` checks them, the methods score."""

    def __init__(self, max_score: float, half_life: float, malicious: float,
                 suspicious: float, by_action: dict[str, str], by_rule: dict[str, str],
                 by_method: dict[str, str], attack: frozenset[str],
                 user_counters: frozenset[str], streak: frozenset[str],
                 attempt_counters: frozenset[str], features: list[Feature],
                 spray_min_users: int = 10, spray_max_per_user: float = 3.0,
                 compromise_after: int = 5, max_users_kept: int = 1000,
                 max_ports_kept: int = 1000, examples: list[dict[str, Any]] | None = None,
                 sources: list[str] | None = None) -> None:
        self.max_score = max_score
        self.half_life = half_life  # seconds
        self.malicious = malicious
        self.suspicious = suspicious
        self.by_action = by_action
        self.by_rule = by_rule
        self.by_method = by_method
        self.attack = attack
        self.user_counters = user_counters
        self.streak = streak
        self.attempt_counters = attempt_counters
        self.features = features
        self.spray_min_users = spray_min_users
        self.spray_max_per_user = spray_max_per_user
        self.compromise_after = compromise_after
        self.max_users_kept = max_users_kept
        self.max_ports_kept = max_ports_kept
        self.examples = [] if examples is None else examples
        self.sources = [] if sources is None else sources  # the files, as text

    def __repr__(self) -> str:
        return f"Model(sources={self.sources!r}, features={len(self.features)})"

    @property
    def _plan(self) -> list[tuple[str, str, int, float, float | None]]:
        plan = self.__dict__.get("_plan_cache")
        if plan is None or plan[0] is not self.features:
            plan = (self.features, [(f.name, f.count, f.free, f.points, f.cap)
                                    for f in self.features])
            self.__dict__["_plan_cache"] = plan
        return plan[1]

    # ---- loading ------------------------------------------------------------------------------
    @classmethod
    def load(cls, dirs: Iterable[str | Path] | None = None) -> Model:
        """The shipped file, with any `reputation.toml` of later rule dirs merged over it."""
        paths = [os.path.join(shipped_rules_path(), MODEL_FILE)]
        shipped = os.path.realpath(paths[0])
        for d in dirs or ():
            p = os.path.join(path_text(d), MODEL_FILE)
            if os.path.realpath(p) != shipped and os.path.isfile(p):
                paths.append(p)
        return cls.from_dict(_read_merged(paths), paths)

    @classmethod
    def from_dict(cls, data: dict[str, Any], sources: list[str] | None = None) -> Model:
        where = " + ".join(str(p) for p in sources or []) or MODEL_FILE
        known = {"score", "verdicts", "derive", "counters", "feature", "example"}
        for key in data:
            if key not in known:
                raise ConfigError(f"{where}: unknown table [{key}]",
                                  hint="known: " + ", ".join(sorted(known)))
        score = _table(data, "score", where)
        verdicts = _table(data, "verdicts", where)
        derive = _table(data, "derive", where)
        counters = dict(_table(data, "counters", where))
        by_rule = _str_map(counters.pop("rules", {}), f"{where}: [counters.rules]")
        by_method = _str_map(counters.pop("methods", {}), f"{where}: [counters.methods]")
        lists = {k: counters.pop(k, []) for k in ("attack", "users", "streak", "attempts")}
        from logly.actions import ACTIONS

        by_action = _str_map(counters, f"{where}: [counters]")
        for action in by_action:
            if action not in ACTIONS:
                raise ConfigError(f"{where}: [counters] {action!r} is not an action",
                                  hint="actions: " + ", ".join(sorted(ACTIONS)))
        names = set(by_action.values()) | set(by_rule.values()) | set(by_method.values())
        for k, v in lists.items():
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise ConfigError(f"{where}: [counters] {k} must be a list of counter names")
            unknown = set(v) - names
            if unknown:
                raise ConfigError(f"{where}: [counters] {k} names unknown counters: "
                                  + ", ".join(sorted(unknown)))
        if "success" not in names:
            raise ConfigError(f"{where}: [counters] needs a counter named \"success\" "
                              "(logins end a run of failures)")
        features = []
        for name, spec in _table(data, "feature", where).items():
            fw = f"{where}: [feature.{name}]"
            if not isinstance(spec, dict):
                raise ConfigError(f"{fw} must be a table")
            extra = set(spec) - {"count", "points", "cap", "free", "text"}
            if extra:
                raise ConfigError(f"{fw}: unknown keys " + ", ".join(sorted(extra)))
            count = spec.get("count")
            if count not in names and count not in DERIVED:
                raise ConfigError(f"{fw}: count {count!r} is neither a counter nor one of "
                                  + ", ".join(DERIVED))
            points = _number(spec.get("points"), f"{fw} points", minimum=0)
            cap = spec.get("cap")
            cap = None if cap is None else _number(cap, f"{fw} cap", minimum=0)
            free = int(_number(spec.get("free", 0), f"{fw} free", minimum=0))
            text = spec.get("text", name + ": {n}")
            if not isinstance(text, str):
                raise ConfigError(f"{fw}: text must be a string")
            try:
                text.format(**_TEMPLATE_PROBE)
            except (KeyError, IndexError, ValueError) as exc:
                raise ConfigError(f"{fw}: text {text!r} does not format ({exc})",
                                  hint="placeholders: " + ", ".join(sorted(_TEMPLATE_PROBE))
                                  ) from None
            features.append(Feature(name, count, points, cap, free, text))
        model = cls(
            max_score=_number(score.get("max", 100), f"{where}: [score] max", minimum=1),
            half_life=parse_duration(score.get("half_life", "7d"), f"{where}: [score] half_life"),
            malicious=_number(verdicts.get("malicious", 60), f"{where}: [verdicts] malicious"),
            suspicious=_number(verdicts.get("suspicious", 25),
                               f"{where}: [verdicts] suspicious"),
            by_action=by_action, by_rule=by_rule, by_method=by_method,
            attack=frozenset(lists["attack"]), user_counters=frozenset(lists["users"]),
            streak=frozenset(lists["streak"]), attempt_counters=frozenset(lists["attempts"]),
            features=features,
            examples=list(data.get("example", [])), sources=[str(p) for p in sources or []],
        )
        if not 0 < model.suspicious <= model.malicious:
            raise ConfigError(f"{where}: [verdicts] needs 0 < suspicious <= malicious")
        for key in ("spray_min_users", "compromise_after", "max_users_kept", "max_ports_kept"):
            if key in derive:
                setattr(model, key, int(_number(derive[key], f"{where}: [derive] {key}",
                                                minimum=1)))
        if "spray_max_per_user" in derive:
            model.spray_max_per_user = _number(derive["spray_max_per_user"],
                                               f"{where}: [derive] spray_max_per_user",
                                               minimum=0)
        extra = set(derive) - {"spray_min_users", "spray_max_per_user", "compromise_after",
                               "max_users_kept", "max_ports_kept"}
        if extra:
            raise ConfigError(f"{where}: [derive] unknown keys " + ", ".join(sorted(extra)))
        return model

    # ---- scoring ------------------------------------------------------------------------------
    def facts(self, state: Mapping[str, Any], users: Mapping[str, int],
              blocklists: list[str], hosts: int = 0) -> dict[str, float]:
        """The counts the features read, from an address's stored state."""
        c: dict[str, float] = dict(state.get("counters", {}))
        n_users = len(users) + (1 if state.get("users_over") else 0)
        attempts = self.attempts(c)
        c["users"] = n_users
        c["spray"] = 1 if (n_users >= self.spray_min_users
                           and attempts <= self.spray_max_per_user * n_users) else 0
        c["ports"] = len(state.get("ports", {}))
        bans = c.get("f2b_ban", 0)
        c["banned"] = 1 if bans else 0
        c["recidive"] = max(0, bans - 1)
        c["compromise"] = state.get("compromise", 0)
        c["blocklists"] = len(blocklists)
        c["hosts"] = max(0, hosts - 1)
        return c

    def attempts(self, counters: Mapping[str, float]) -> float:
        return sum(counters.get(k, 0) for k in self.attempt_counters)

    def has_attack(self, facts: Mapping[str, float]) -> bool:
        return any(facts.get(k, 0) for k in self.attack) or bool(facts.get("blocklists"))

    def score(self, facts: Mapping[str, float], allowlisted: bool = False
              ) -> tuple[float, list[list[Any]]]:
        """(base score, evidence): evidence rows are [feature, count, points]; their points
        add up to the base score (before the cap at [score].max, which is its own row)."""
        evidence: list[list[Any]] = []
        total = 0.0
        get = facts.get
        for name, count, free, points, cap in self._plan:
            n = get(count, 0)
            units = n - free
            if units <= 0:
                continue
            pts = units * points
            if cap is not None and pts > cap:
                pts = cap
            pts = round(pts, 3)
            if pts <= 0:
                continue
            evidence.append([name, n, 0.0 if allowlisted else pts])
            total += pts
        if allowlisted:
            return 0.0, [["allowlisted", 1, 0.0], *evidence]
        if total > self.max_score:
            evidence.append(["cap", round(total, 3), round(self.max_score - total, 3)])
            total = self.max_score
        return round(total, 3), evidence

    def decay(self, age_seconds: float, half_life: float | None = None) -> float:
        hl = half_life or self.half_life
        return 1.0 if age_seconds <= 0 else math.pow(0.5, age_seconds / hl)

    def verdict(self, score: float, base: float, facts: Mapping[str, float] | None = None,
                allowlisted: bool = False) -> str:
        if allowlisted:
            return "allowlisted"
        if score >= self.malicious:
            return "malicious"
        if score >= self.suspicious:
            return "suspicious"
        if base > 0 or (facts is not None and self.has_attack(facts)):
            return "low"
        return "clean"

    def explain(self, name: str, n: float, context: Mapping[str, Any]) -> str:
        """The evidence row's sentence, from the feature's `text`."""
        if name == "allowlisted":
            return "allowlisted: never scored as malicious (the points below are not counted)"
        if name == "cap":
            return f"capped at {self.max_score:g} (the features add up to {n:g})"
        for f in self.features:
            if f.name == name:
                try:
                    return f.text.format(**{**_TEMPLATE_PROBE, **context, "n": _num(n)})
                except (KeyError, IndexError, ValueError):
                    return f"{name}: {_num(n)}"
        return f"{name}: {_num(n)}"


_TEMPLATE_PROBE: dict[str, Any] = {"n": 1, "users": 1, "per_user": 1.0, "lists": "",
                                   "compromise_after": 5, "ports": "", "hosts": 1}


def _num(n: float) -> int | float:
    return int(n) if float(n).is_integer() else n


# ---- the parsed files, cached -------------------------------------------------------------
# `logly ip` in a new process would spend ~6 ms importing tomllib (and typing) and parsing the
# model: the merged data is kept as JSON in the user's cache directory, under the files' stat
# (paths, mtime, ctime, size, inode). It is a cache of the parse only: every load still checks
# the data (`from_dict`). A file changed in the last seconds is not cached: file times move
# in clock ticks, so a second edit within one tick could leave every stamp as it was.
CACHE_FORMAT = 1
_SETTLED_SECONDS = 2.0


def cache_path() -> str | None:
    """$XDG_CACHE_HOME/logly/reputation-model.json (~/.cache by default), None if unknown."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    if not os.path.isabs(base):
        return None
    return os.path.join(base, "logly", "reputation-model.json")


def _read_merged(paths: list[str]) -> dict[str, Any]:
    """The files' TOML merged in order, from the cache when their stamps are unchanged."""
    import json

    stamps: list[list[Any]] | None = []
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:
            stamps = None  # read_toml names the problem
            break
        stamps.append([p, st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino, st.st_dev])
    key = {"format": CACHE_FORMAT, "files": stamps}
    where = cache_path() if stamps is not None else None
    if where is not None:
        try:
            with open(where, encoding="utf-8") as f:
                cached = json.loads(f.read())
            if isinstance(cached, dict) and cached.get("key") == key \
                    and isinstance(cached.get("data"), dict):
                return cached["data"]
        except (OSError, ValueError):
            pass
    data: dict[str, Any] = {}
    for p in paths:
        _merge(data, read_toml(p))
    if where is not None and stamps is not None:
        import time

        settled = (time.time() - _SETTLED_SECONDS) * 1e9
        if all(s[1] < settled and s[2] < settled for s in stamps):
            _store(where, {"key": key, "data": data})
    return data


def _store(where: str, entry: dict[str, Any]) -> None:
    """Write the cache entry atomically; any failure only means no cache."""
    import json

    tmp = f"{where}.{os.getpid()}.tmp"
    try:
        text = json.dumps(entry, ensure_ascii=True)  # TOML dates do not go: then no cache
        os.makedirs(os.path.dirname(where), exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, where)
    except (OSError, TypeError, ValueError):
        import contextlib

        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> None:
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v


def _table(data: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: [{key}] must be a table")
    return value


def _str_map(value: Any, where: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ConfigError(f"{where}: must map names to counter names (strings)")
    return dict(value)


def _number(value: Any, where: str, minimum: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}: must be a number, not {value!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{where}: must be at least {minimum:g}, not {value!r}")
    return float(value)
