"""``--selector``: label matchers as PromQL reads them, checked before any rule is rendered.

Offline: :mod:`mlmonitor.tools.rules` calls :func:`parse_selector` when ``mlmonitor alerts render``
runs. A selector is pasted verbatim into every rule, so anything Prometheus would refuse (a raw
newline, an escape its lexer does not know, a regular expression RE2 does not parse, a
``__name__`` matcher) or read otherwise is refused here, in one line, instead of in promtool or in
a Prometheus that stops loading the rules. Nothing but label matchers gets through, so nothing
can be injected into the expressions.
"""
from __future__ import annotations

import re

from mlmonitor.contract import (BIN, CLASS, COMPONENT, DIRECTION, ERROR_TYPE, FEATURE, GPU, METHOD, MODEL_ID,
                              MODEL_NAME, MODEL_VERSION, OUTCOME, REASON, ROUTE, RUN_ID, SIGNAL, STAGE, STATUS,
                              WORKER)

__all__ = ["parse_selector", "selector_labels", "regex_error", "SAMPLE_LABELS"]

#: an escape of a PromQL double-quoted string (Go's): the only ones Prometheus' lexer accepts
_ESCAPE = r'\\(?:[abfnrtv\\"]|[0-7]{3}|x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8})'
#: one label matcher: name, operator, the value between its quotes (no raw newline, known escapes)
_MATCHER = re.compile(rf'\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\\n]|{_ESCAPE})*)"\s*')
#: labels a selector may not name: Prometheus' own (``__name__``, ``le``, ``quantile``) and those
#: mlmonitor writes on its samples. The selector picks targets (job, namespace, cluster ...); the
#: rules aggregate these away, so a matcher on one would select nothing in some rules
#: (``up`` has no ``model_name``) or split ratios by it.
SAMPLE_LABELS = frozenset({
    "le", "quantile", MODEL_NAME, MODEL_VERSION, RUN_ID, MODEL_ID, METHOD, ROUTE, STATUS, ERROR_TYPE, STAGE,
    CLASS, FEATURE, BIN, OUTCOME, DIRECTION, COMPONENT, SIGNAL, WORKER, GPU, REASON})
#: RE2 escapes kept by the regex check, outside and inside a character class
_RX_CLASSES, _RX_CONTROL = set("dDwWsS"), set("afnrtv")
_RX_MAX_REPEAT = 1000


def parse_selector(text: str) -> list[tuple[str, str, str]]:
    """(name, operator, decoded value) of each matcher of a ``--selector`` (braces stripped).

    ValueError, in one line, for anything Prometheus would refuse or read otherwise: a raw
    control character, an escape its lexer does not know, a value that is not UTF-8, a
    regular expression outside the plain RE2 subset :func:`regex_error` checks, a label
    that starts with ``__`` or is one of :data:`SAMPLE_LABELS`.
    """
    def refuse(why: str) -> ValueError:
        return ValueError(f"--selector {text!r}: {why}")

    if not text.isprintable():
        raise refuse("a raw control character (a newline?); write it as an escape such as \\n")
    matchers: list[tuple[str, str, str]] = []
    pos = 0
    while text:
        found = _MATCHER.match(text, pos)
        if not found:
            unknown = [e for e in re.findall(_ESCAPE + r"|\\.?", text[pos:]) if not re.fullmatch(_ESCAPE, e)]
            if unknown:
                raise refuse(f"the escape {unknown[0]} is not one of PromQL's (\\\\ \\\" \\n \\t \\u00e9 ...)")
            raise refuse("not label matchers such as '{job=\"my-model\"}'")
        name, op, quoted = found.groups()
        if name.startswith("__") or name in SAMPLE_LABELS:
            raise refuse(f"{name} is not a target label: select targets by job, namespace, cluster or the like")
        value = _unquote(quoted)
        if value is None:
            raise refuse(f"the value of {name} is not valid UTF-8 (or escapes a surrogate)")
        why = regex_error(value) if op in ("=~", "!~") else None
        if why:
            raise refuse(f"{name}{op}: {why}")
        matchers.append((name, op, value))
        pos = found.end()
        if pos == len(text):
            break
        if text[pos] != ",":
            raise refuse(f"expected ',' after {name}{op}\"{quoted}\"")
        pos += 1
    return matchers


def selector_labels(text: str) -> tuple[str, ...]:
    """The label names of a selector, each once, in order: every aggregation of the rules keeps them."""
    return tuple(dict.fromkeys(name for name, _, _ in parse_selector(text)))


def _unquote(quoted: str) -> str | None:
    """The value of a Go double-quoted string body whose escapes :data:`_ESCAPE` matched; None if not UTF-8."""
    out, i = bytearray(), 0
    while i < len(quoted):
        char = quoted[i]
        if char != "\\":
            out += char.encode("utf-8", "surrogatepass")
            i += 1
            continue
        kind = quoted[i + 1]
        if kind in "xuU":
            size = {"x": 2, "u": 4, "U": 8}[kind]
            code = int(quoted[i + 2:i + 2 + size], 16)
            i += 2 + size
            if kind == "x":
                out.append(code)
            elif code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
                return None
            else:
                out += chr(code).encode("utf-8")
        elif kind in "01234567":
            code = int(quoted[i + 1:i + 4], 8)
            if code > 0xFF:
                return None
            out.append(code)
            i += 4
        else:
            out += {"a": b"\a", "b": b"\b", "f": b"\f", "n": b"\n", "r": b"\r", "t": b"\t",
                    "v": b"\v"}.get(kind, kind.encode())
            i += 2
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError:
        return None


def regex_error(rx: str) -> str | None:
    r"""Why ``rx`` is not in the plain RE2 subset the rules accept, or None.

    The subset: literals, ``.``, ``^``, ``$``, ``|``, ``(...)``, ``(?:...)``, ``(?i)``-style
    flags, classes ``[a-z\d]``, the escapes ``\d \w \s \b \A \z`` (and their negations),
    an escaped punctuation character, ``* + ? {n} {n,} {n,m}`` (``m`` <= 1000, nested counts
    multiplied <= 1000), each optionally lazy. Everything here parses the same in RE2 (Go,
    Prometheus); what is left out (look-arounds, back references, ``\p{..}``, ``[[:alpha:]]``,
    possessive or nested repetitions) is refused rather than guessed at.
    """
    try:
        _Regex(rx).check()
    except ValueError as exc:
        return f"{exc} in the regular expression {rx!r}"
    return None


class _Regex:
    """A recursive-descent check of :func:`regex_error`'s subset; ValueError says what is wrong."""

    def __init__(self, text: str) -> None:
        self.text, self.i = text, 0

    def peek(self, ahead: int = 0) -> str:
        return self.text[self.i + ahead] if self.i + ahead < len(self.text) else ""

    def check(self) -> None:
        self.alternation()
        if self.i < len(self.text):
            raise ValueError(f"an unmatched {self.peek()!r}")

    def alternation(self) -> int:
        """The largest repeat count product inside."""
        weight = self.sequence()
        while self.peek() == "|":
            self.i += 1
            weight = max(weight, self.sequence())
        return weight

    def sequence(self) -> int:
        weight = 1
        while self.peek() not in ("", "|", ")"):
            inner, repeatable = self.atom()
            count = self.repetition()
            if count is not None:
                if not repeatable:
                    raise ValueError("a repetition of nothing (or of an anchor)")
                inner *= count
                if inner > _RX_MAX_REPEAT:
                    raise ValueError(f"repeat counts above {_RX_MAX_REPEAT}")
                if self.peek() in ("*", "+", "?", "{"):
                    raise ValueError("a repetition of a repetition")
            weight = max(weight, inner)
        return weight

    def atom(self) -> tuple[int, bool]:
        char = self.peek()
        self.i += 1
        if char == "(":
            if self.peek() == "?":
                flags = re.match(r"\?[ims]+(-[ims]+)?([:)])|\?-[ims]+([:)])|\?:", self.text[self.i:])
                if not flags:
                    raise ValueError("a group other than (...), (?:...) or (?i)-style flags")
                self.i += flags.end()
                if flags.group(0).endswith(")"):
                    return 1, False
            weight = self.alternation()
            if self.peek() != ")":
                raise ValueError("an unclosed '('")
            self.i += 1
            return weight, True
        if char == "[":
            self.char_class()
            return 1, True
        if char == "\\":
            kind = self.peek()
            self.i += 1
            if kind in _RX_CLASSES or kind in _RX_CONTROL or _punctuation(kind):
                return 1, True
            if kind in ("b", "B", "A", "z"):
                return 1, False
            raise ValueError(f"the escape \\{kind} (not in the subset)" if kind else "a trailing backslash")
        if char in ("^", "$"):
            return 1, False
        if char in ("*", "+", "?"):
            raise ValueError(f"nothing before {char!r} to repeat")
        if char in ("{", "}", "]"):
            raise ValueError(f"a bare {char!r}: escape it as \\{char}")
        return 1, True

    def repetition(self) -> int | None:
        char = self.peek()
        if char in ("*", "+", "?"):
            self.i += 1
            count = 1
        elif char == "{":
            bounds = re.match(r"\{(\d+)(,(\d*))?\}", self.text[self.i:])
            if not bounds:
                raise ValueError("a '{' that is not a repeat count {n}, {n,} or {n,m}: escape it as \\{")
            low, high = int(bounds.group(1)), bounds.group(3)
            if (high and int(high) < low) or max(low, int(high or 0)) > _RX_MAX_REPEAT:
                raise ValueError(f"the repeat count {bounds.group(0)}")
            self.i += bounds.end()
            count = max(low, int(high or 0), 1)
        else:
            return None
        if self.peek() == "?":
            self.i += 1
        return count

    def char_class(self) -> None:
        if self.peek() == "^":
            self.i += 1
        items = 0
        while self.peek() != "]":
            low = self.class_char()
            if self.peek() == "-" and self.peek(1) not in ("]", ""):
                self.i += 1
                high = self.class_char()
                if low is None or high is None or low > high:
                    raise ValueError("a character range that is not low-high")
            items += 1
        if not items:
            raise ValueError("an empty character class")
        self.i += 1

    def class_char(self) -> str | None:
        r"""One character of a class (None for \d-style escapes)."""
        char = self.peek()
        if char == "":
            raise ValueError("an unclosed '['")
        self.i += 1
        if char == "[":
            raise ValueError("a '[' inside a character class: escape it as \\[")
        if char != "\\":
            return char
        kind = self.peek()
        self.i += 1
        if kind in _RX_CLASSES:
            return None
        if kind in _RX_CONTROL:
            return "\a\f\n\r\t\v"["afnrtv".index(kind)]
        if _punctuation(kind):
            return kind
        raise ValueError(f"the escape \\{kind} in a character class (not in the subset)")


def _punctuation(char: str) -> bool:
    """An ASCII punctuation character, which RE2 lets a backslash escape."""
    return len(char) == 1 and char.isascii() and char.isprintable() and not char.isalnum() and char != " "
