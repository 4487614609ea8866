"""Route templates: the configured ``routes`` and ``prediction_paths`` that name a request's route.

Settings check them at start-up (a bad template is a ConfigError then) and the engine matches a
request's path against them; both import this module, which imports nothing of mlmonitor.
"""
from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["RouteTemplate", "RouteTable", "is_template", "MAX_TEMPLATE_PATH"]

#: a path longer than this is never matched against templates (bounded work per request)
MAX_TEMPLATE_PATH = 2048
_PLACEHOLDER = re.compile(r"<(?:([A-Za-z_][A-Za-z0-9_]*):)?([A-Za-z_][A-Za-z0-9_]*)>"
                          r"|\{([A-Za-z_][A-Za-z0-9_]*)(?::([A-Za-z_][A-Za-z0-9_]*))?\}")
#: one segment of a template: its literal text, or (prefix, suffix, digits only)
Segment = str | tuple[str, str, bool]


def is_template(path: str) -> bool:
    """Whether a configured path is a template (checked as one, so a stray ``>`` is refused)."""
    return "<" in path or "{" in path or ">" in path or "}" in path


class RouteTemplate:
    """``/v1/models/<name>:predict`` (Flask/Werkzeug) or ``/items/{id}`` (Starlette/Django):
    matched segment by segment, with no regular expression at request time.

    A segment holds at most one placeholder, with literal text around it (``<name>:predict``);
    a placeholder matches one non-empty segment part without ``/`` (``int`` converters:
    ASCII digits only). The work is one comparison per segment: bounded, no backtracking.
    """

    __slots__ = ("prediction", "segments", "template")

    def __init__(self, template: str, prediction: bool = False) -> None:
        self.template = template
        self.prediction = prediction
        self.segments: list[Segment] = []
        for part in template.split("/")[1:]:
            found = list(_PLACEHOLDER.finditer(part))
            rest = _PLACEHOLDER.sub("", part)
            if "<" in rest or ">" in rest or "{" in rest or "}" in rest:
                raise ValueError(f"segment {part!r} is not a placeholder like <name>, <int:id>, "
                                 "{id} or {id:int} with literal text around it")
            if not found:
                self.segments.append(part)
                continue
            if len(found) > 1:
                raise ValueError(f"segment {part!r} has more than one placeholder")
            match = found[0]
            converter = match.group(1) or match.group(4) or ""
            if converter == "path":
                raise ValueError(f"segment {part!r}: a path placeholder spans segments; "
                                 "a template matches one segment per placeholder")
            self.segments.append((part[:match.start()], part[match.end():], converter == "int"))

    def matches(self, parts: list[str]) -> bool:
        """``parts``: the request path split on ``/`` (after the leading one), same length."""
        for want, got in zip(self.segments, parts, strict=False):
            if isinstance(want, str):
                if want != got:
                    return False
                continue
            prefix, suffix, digits = want
            if len(got) <= len(prefix) + len(suffix) or not got.startswith(prefix) \
                    or not got.endswith(suffix):
                return False
            if digits:  # ASCII only, as Starlette's and Django's converters: not "²", "٣"
                value = got[len(prefix):len(got) - len(suffix)]
                if not (value.isascii() and value.isdigit()):
                    return False
        return True


class RouteTable:
    """The configured paths of one app: exact ones looked up in a set, templates by length."""

    __slots__ = ("known", "max_segments", "prediction_paths", "templates")

    def __init__(self, prediction_paths: Iterable[str], routes: Iterable[str]) -> None:
        prediction_paths, routes = tuple(prediction_paths), tuple(routes)
        self.prediction_paths = frozenset(p for p in prediction_paths if not is_template(p))
        self.known = frozenset(p for p in routes if not is_template(p)) | self.prediction_paths
        #: segment count -> templates of that length, prediction paths first, in the order given
        self.templates: dict[int, list[RouteTemplate]] = {}
        for path, prediction in [(p, True) for p in prediction_paths] + \
                [(p, False) for p in routes]:
            if is_template(path):
                template = RouteTemplate(path, prediction)  # checked by Settings already
                self.templates.setdefault(len(template.segments), []).append(template)
        self.max_segments = max(self.templates, default=0)

    def match_template(self, path: str) -> RouteTemplate | None:
        """The first template matching ``path`` (exact paths are looked up before this)."""
        if len(path) > MAX_TEMPLATE_PATH or path.count("/") > self.max_segments:
            return None
        parts = path.split("/")[1:]
        for template in self.templates.get(len(parts), ()):
            if template.matches(parts):
                return template
        return None
