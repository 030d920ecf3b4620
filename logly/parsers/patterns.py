"""The rule pattern language, compiled once by pyparsing into anchored regular expressions.

    Failed <method:word> for invalid user <user> from <ip>[ port <port>][ ssh2]

- plain text matches itself; a space matches one or more spaces (pam pads with two);
- `<name>` captures a field whose type is its name when that is a known type (`ip`, `port`,
  `user`, ...), `<name:type>` chooses the type; `<*>` skips text without capturing;
- `[ ... ]` is optional, `{a|b}` is a choice, `\\` escapes the next character.

Every pattern must match the whole message. When a catch-all (`user`, `rest`, `<*>`) stands
before an `<ip>` and the tail after the address is fixed, the address that matches is the one
written last, so an attacker who puts "from 6.6.6.6" in a username cannot choose it. When free
text follows the address too, both the longest and the shortest reading are tried and an
address they disagree on is not attributed at all (see `Compiled.lazy`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import pyparsing as pp

# Regex per capture type. `ip` also admits a hostname: sshd with UseDNS writes names, which are
# kept as written (never resolved) and validated as addresses later.
TYPES: dict[str, str] = {
    "ip": r"[0-9A-Za-z_.:%-]+?",
    "port": r"\d{1,5}",
    "int": r"-?\d+",
    "pid": r"\d+",
    "uid": r"-?\d+",
    "word": r"\S+",
    "user": r".*",
    "any": r".*?",
    "rest": r".*",
    # a `key=%s` field that may be empty but, when set, does not start with a space
    "text": r"(?:\S.*|)",
    # bounded free text (a reason, a log prefix): a lazy catch-all that several others follow
    # costs O(n) per position it tries, i.e. O(n^2) on a crafted line; 128 keeps it linear
    "short": r".{0,128}?",
    "long": r".{0,1024}?",  # the same for fields that may be longer (sudo's ENV=, CHROOT=)
    "hex": r"[0-9A-Fa-f]+",
    "jail": r"[^\]\s]+",
    "name": r"[^\s()\[\]:;,]+",
}
# The catch-alls, and how each reads in the shortest reading (see `Compiled.lazy`).
LAZY_TYPES: dict[str, str] = {"user": r".*?", "any": r".*?", "rest": r".*?",
                              "text": r"(?:\S.*?|)", "short": r".{0,128}?",
                              "long": r".{0,1024}?"}
GREEDY = frozenset(LAZY_TYPES)
# How the regexes are written for speed, each the exact equivalent of the plain form (same
# matches, same captures, same order of trial); the per-line cost is mostly these regexes:
# - a space is " " then " *" rather than " +": sre skips ahead on a leading literal, so a
#   catch-all backtracking towards " from" stops only at spaces, and an optional part that
#   cannot start here is refused at its first character;
# - an optional part is "(?:X|)" rather than "(?:X)?": both try X first, then nothing, but
#   sre runs "?" on a group as a general repeat (a context allocated per attempt) and "|" as
#   a cheap branch. A lazy <ip> retries every optional tail at each length it tries.
SPACES = "  *"
FIELD_NAMES = frozenset({"ip", "user", "port"})


class PatternError(ValueError):
    """A pattern that does not compile; `column` is 1-based within the pattern."""

    def __init__(self, message: str, column: int | None = None) -> None:
        super().__init__(message)
        self.column = column


@dataclass
class Compiled:
    regex: re.Pattern[str]
    # regex group name -> capture name ("ip", "user", "port", or a metadata key)
    groups: dict[str, str] = field(default_factory=dict)
    literal_prefix: str = ""
    source: str = ""
    # set when the pattern's shape lets two readings disagree on the address
    lazy: re.Pattern[str] | None = None
    # the fixed word before <ip> ("from"): fewer than two in a message means no ambiguity
    ip_sep: str = ""
    # capture names in group order, for zip() with match.groups()
    fields: tuple[str, ...] = ()
    # where in match.groups() each named field sits, worked out once from `fields`
    ip_at: tuple[int, ...] = field(init=False, default=())
    user_at: tuple[int, ...] = field(init=False, default=())
    port_at: tuple[int, ...] = field(init=False, default=())
    meta_at: tuple[tuple[int, str], ...] = field(init=False, default=())

    def __post_init__(self) -> None:
        at = {n: tuple(i for i, f in enumerate(self.fields) if f == n)
              for n in ("ip", "user", "port")}
        self.ip_at, self.user_at, self.port_at = at["ip"], at["user"], at["port"]
        self.meta_at = tuple((i, f) for i, f in enumerate(self.fields) if f not in at)


# --- grammar -----------------------------------------------------------------------------------
# Nodes: ("lit", text) ("sp",) ("cap", name, type) ("skip",) ("opt", [nodes]) ("alt", [[nodes]])

# Spaces are significant in patterns; restore pyparsing's default once the grammar is built.
_saved_ws = pp.ParserElement.DEFAULT_WHITE_CHARS
pp.ParserElement.set_default_whitespace_chars("")
_ident = pp.Word(pp.alphas + "_", pp.alphanums + "_-")
_capture = (
    pp.Suppress("<")
    + (pp.Literal("*")("skip") | (_ident("name") + pp.Optional(pp.Suppress(":") + _ident("type"))))
    + pp.Suppress(">")
)
_escape = pp.Regex(r"\\(.)")
_text = pp.Regex(r"[^<>\[\]{}|\\ ]+")
_space = pp.Regex(r" +")
_seq = pp.Forward()
_optional = pp.Suppress("[") + pp.Group(_seq) + pp.Suppress("]")
_branches = pp.DelimitedList(pp.Group(_seq), delim="|")
_choice = pp.Suppress("{") + pp.Group(_branches) + pp.Suppress("}")


def _cap_action(toks: pp.ParseResults) -> tuple:
    if toks.get("skip"):
        return ("skip",)
    name = toks["name"]
    kind = toks.get("type") or (name if name in TYPES else "word")
    if kind not in TYPES:
        raise pp.ParseFatalException(f"unknown capture type {kind!r} (known: {', '.join(TYPES)})")
    return ("cap", name, kind)


_capture.set_parse_action(_cap_action)
_escape.set_parse_action(lambda t: ("lit", t[0][1]))
_text.set_parse_action(lambda t: ("lit", t[0]))
_space.set_parse_action(lambda t: ("sp",))
_optional.set_parse_action(lambda t: ("opt", list(t[0])))
_choice.set_parse_action(lambda t: ("alt", [list(g) for g in t[0]]))
_seq <<= pp.ZeroOrMore(_capture | _optional | _choice | _escape | _space | _text)
_pattern = _seq + pp.StringEnd()
pp.ParserElement.set_default_whitespace_chars(_saved_ws)


def parse(pattern: str) -> list[tuple]:
    try:
        return list(_pattern.parse_string(pattern, parse_all=True))
    except pp.ParseBaseException as exc:
        msg = exc.msg
        if "Expected end of text" in msg:
            msg = "unbalanced or stray bracket"
        raise PatternError(msg, exc.column) from None


def _flatten(nodes: list[tuple]) -> list[tuple]:
    """Left-to-right walk; optional/choice contents count as possibly present."""
    out: list[tuple] = []
    for node in nodes:
        if node[0] == "opt":
            out.extend(_flatten(node[1]))
        elif node[0] == "alt":
            for branch in node[1]:
                out.extend(_flatten(branch))
        else:
            out.append(node)
    return out


def _ambiguous_shape(nodes: list[tuple]) -> bool:
    """True if a catch-all stands before an <ip> and another after it.

    Then the tail cannot pin the address down (sshd's auth-info after "ssh2: " is free text), so
    the matcher also tries the shortest reading and drops the address when the two disagree.
    """
    flat = _flatten(nodes)
    greedy_seen = False
    for i, node in enumerate(flat):
        if node[0] == "skip" or (node[0] == "cap" and node[2] in GREEDY):
            greedy_seen = True
        if node[0] == "cap" and node[2] == "ip" and greedy_seen:
            for later in flat[i + 1 :]:
                if later[0] == "skip" or (later[0] == "cap" and later[2] in GREEDY):
                    return True
    return False


def _ip_separator(nodes: list[tuple]) -> str:
    flat = _flatten(nodes)
    for i, node in enumerate(flat):
        if node[0] == "cap" and node[2] == "ip":
            words = []
            for prev in reversed(flat[:i]):
                if prev[0] == "lit":
                    words.append(prev[1])
                elif prev[0] == "sp":
                    words.append(" ")
                else:
                    break
            return "".join(reversed(words)).strip()
    return ""


def compile_pattern(pattern: str) -> Compiled:
    nodes = parse(pattern)
    if not nodes:
        raise PatternError("empty pattern")
    groups: dict[str, str] = {}
    counter = [0]

    def emit(seq: list[tuple], lazy: bool = False) -> str:
        parts = []
        for node in seq:
            kind = node[0]
            if kind == "lit":
                parts.append(re.escape(node[1]))
            elif kind == "sp":
                parts.append(SPACES)
            elif kind == "skip":
                parts.append(".*?")
            elif kind == "cap":
                counter[0] += 1
                gname = f"g{counter[0]}_{re.sub(r'[^0-9A-Za-z_]', '_', node[1])}"
                groups[gname] = node[1]
                rx = LAZY_TYPES[node[2]] if lazy and node[2] in GREEDY else TYPES[node[2]]
                parts.append(f"(?P<{gname}>{rx})")
            elif kind == "opt":
                parts.append(f"(?:{emit(node[1], lazy)}|)")  # not "(?:...)?": see SPACES
            elif kind == "alt":
                parts.append("(?:" + "|".join(emit(b, lazy) for b in node[1]) + ")")
        return "".join(parts)

    body = emit(nodes)
    lazy_body = None
    if _ambiguous_shape(nodes):
        counter[0] = 0
        lazy_body = emit(nodes, lazy=True)
    prefix = []
    for node in nodes:
        if node[0] != "lit":  # a space matches a run of spaces: the exact prefix ends there
            break
        prefix.append(node[1])
    try:
        regex = re.compile(body + r"\s*\Z", re.DOTALL)
    except re.error as exc:  # pragma: no cover - the grammar should prevent this
        raise PatternError(f"regex does not compile: {exc}") from None
    literal = "".join(prefix)
    lazy = re.compile(lazy_body + r"\s*\Z", re.DOTALL) if lazy_body else None
    return Compiled(regex=regex, groups=groups, literal_prefix=literal, source=pattern, lazy=lazy,
                    ip_sep=_ip_separator(nodes) if lazy else "",
                    fields=tuple(groups[g] for g, _ in
                                 sorted(regex.groupindex.items(), key=lambda kv: kv[1])))
