"""A game's config checked against its ``config_schema``: the JSON Schema a config plausibly uses.

:func:`check` raises :class:`~groups.ConfigError` on the first value that does not fit, naming
it as the API does (``config.payoffs.AA[0]``; a key that is no identifier as ``config["a b"]``)
and saying what was expected and what arrived. The keywords it knows:

- ``type``: one name or a list of them. ``integer`` is a number written without a fraction
  (``2``, not ``2.0``), ``number`` any number; a number is finite (and a float can hold it), and
  ``true`` and ``false`` are no numbers. ``array`` is a list, ``object`` a JSON object (string
  keys). JSON Schema takes ``2.0`` as an integer; this refuses it, because the check hands the
  config on as it came: a game relying on its schema would get the float ``2.0`` where it said
  integer (``range(2.0)`` raises). A JSON client writes a whole number without a fraction
  (``JSON.stringify(2.0)`` is ``2``); one that writes ``2.0`` is told so.
- ``enum``, ``const``: JSON equality (``1`` equals ``1.0``; ``true`` does not equal ``1``).
- ``minimum``, ``maximum``, ``exclusiveMinimum``, ``exclusiveMaximum``: numbers (draft 6 and
  later; the boolean form of draft 4 is ignored), checked on numbers only.
- ``minLength``, ``maxLength``: characters of a string.
- ``properties``, ``required``, ``additionalProperties`` (``false``, or a schema every other key's
  value must fit) on objects.
- ``items`` (a schema for every item, or a list of schemas for the first items as in drafts
  4-7), ``prefixItems`` (2020-12), ``minItems``, ``maxItems`` on lists.

Every other keyword (``description``, ``default``, ``title``, ``pattern``, ``format``,
``multipleOf``, ``uniqueItems``, ``anyOf``/``oneOf``/``allOf``/``not``, ``$ref``, …) is ignored,
and so is a keyword whose value is not of the kind the keyword takes: a game checks what they
would say in its own ``validate_config``. A type name JSON Schema does not have matches nothing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .exceptions import ConfigError
from .values import is_number, shown

_NAMES = {
    "null": "null",
    "boolean": "true or false",
    "integer": "an integer",
    "number": "a number",
    "string": "a string",
    "array": "a list",
    "object": "an object",
}
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def check(schema: Mapping[str, Any], value: Any, path: str = "config") -> None:
    """Raise :class:`ConfigError` naming the first part of ``value`` that ``schema`` refuses."""
    if not isinstance(schema, Mapping):  # true, false or nonsense: nothing this checks
        return
    expected = _expected(schema)
    types = schema.get("type")
    names = [types] if isinstance(types, str) else types if isinstance(types, list) else None
    if names is not None and not any(_is_type(value, name) for name in names):
        raise ConfigError(path, f"expected {expected}, got {shown(value)}")
    members = schema.get("enum")
    if isinstance(members, list) and not any(_equal(value, member) for member in members):
        raise ConfigError(path, f"expected one of {shown(schema['enum'])}, got {shown(value)}")
    if "const" in schema and not _equal(value, schema["const"]):
        raise ConfigError(path, f"expected {shown(schema['const'])}, got {shown(value)}")
    if is_number(value) and not _in_bounds(schema, value):
        raise ConfigError(path, f"expected {expected}, got {shown(value)}")
    if isinstance(value, str):
        _check_length(schema, value, path)
    elif isinstance(value, list | tuple):
        _check_items(schema, value, path)
    elif isinstance(value, Mapping):
        _check_properties(schema, value, path)


def field_path(path: str, key: str | int) -> str:
    """``path`` and one step into it: ``.name``, ``["odd name"]`` or ``[2]``."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    if _IDENTIFIER.fullmatch(key):
        return f"{path}.{key}"
    quoted = key.replace("\\", "\\\\").replace('"', '\\"')
    return f'{path}["{quoted}"]'


def _is_type(value: Any, name: object) -> bool:
    if name == "null":
        return value is None
    if name == "boolean":
        return isinstance(value, bool)
    if name == "number":
        return is_number(value)
    if name == "integer":  # an int only: 2.0 would reach the game a float (see the module's docstring)
        return is_number(value) and isinstance(value, int)
    if name == "string":
        return isinstance(value, str)
    if name == "array":
        return isinstance(value, list | tuple)
    if name == "object":
        return isinstance(value, Mapping) and all(isinstance(key, str) for key in value)
    return False


def _equal(a: Any, b: Any) -> bool:
    """JSON's equality: a bool equals only a bool, numbers by value, lists item by item, objects key by key."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return set(a) == set(b) and all(_equal(a[key], b[key]) for key in a)
    return type(a) is type(b) and bool(a == b)


def _bound(schema: Mapping[str, Any], keyword: str) -> float | None:
    """A numeric keyword's value; ``None`` when absent or of another kind (draft 4's booleans)."""
    value = schema.get(keyword)
    return value if is_number(value) else None


def _in_bounds(schema: Mapping[str, Any], value: float) -> bool:
    low, high = _bound(schema, "minimum"), _bound(schema, "maximum")
    above, below = _bound(schema, "exclusiveMinimum"), _bound(schema, "exclusiveMaximum")
    return (
        (low is None or value >= low) and (high is None or value <= high)
        and (above is None or value > above) and (below is None or value < below)
    )


def _text(number: float) -> str:
    return str(number) if isinstance(number, int) else f"{number:g}"


def _expected(schema: Mapping[str, Any]) -> str:
    """What ``schema`` asks of a value, in words: ``a number in (0, 1e+09]``, ``an integer or null``."""
    types = schema.get("type")
    names = [types] if isinstance(types, str) else types if isinstance(types, list) else []
    words = [_NAMES.get(name, repr(name)) if isinstance(name, str) else repr(name) for name in names]
    noun = " or ".join(words) if words else "a value"
    lows = [(b, "[") for b in (_bound(schema, "minimum"),) if b is not None]
    lows += [(b, "(") for b in (_bound(schema, "exclusiveMinimum"),) if b is not None]
    highs = [(b, "]") for b in (_bound(schema, "maximum"),) if b is not None]
    highs += [(b, ")") for b in (_bound(schema, "exclusiveMaximum"),) if b is not None]
    # the tightest of each side (a schema may give both forms)
    low = max(lows, key=lambda bound: (bound[0], bound[1] == "(")) if lows else None
    high = min(highs, key=lambda bound: (bound[0], bound[1] == "]")) if highs else None
    if low is not None and high is not None:
        return f"{noun} in {low[1]}{_text(low[0])}, {_text(high[0])}{high[1]}"
    if low is not None:
        return f"{noun} {'at least' if low[1] == '[' else 'above'} {_text(low[0])}"
    if high is not None:
        return f"{noun} {'at most' if high[1] == ']' else 'below'} {_text(high[0])}"
    return noun


def _size(schema: Mapping[str, Any], keyword: str) -> int | None:
    value = schema.get(keyword)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _check_size(schema: Mapping[str, Any], size: int, what: str, value: Any, path: str) -> None:
    """``minLength``/``maxLength`` of a string, ``minItems``/``maxItems`` of a list."""
    low, high = (_size(schema, f"min{what}"), _size(schema, f"max{what}"))
    if (low is None or size >= low) and (high is None or size <= high):
        return
    unit = "characters" if what == "Length" else "items"
    if low is not None and high is not None:
        wanted = f"exactly {low}" if low == high else f"{low} to {high}"
    else:
        wanted = f"at least {low}" if low is not None else f"at most {high}"
    kind = "a string" if what == "Length" else "a list"
    raise ConfigError(path, f"expected {kind} of {wanted} {unit}, got {shown(value)}")


def _check_length(schema: Mapping[str, Any], value: str, path: str) -> None:
    _check_size(schema, len(value), "Length", value, path)


def _check_items(schema: Mapping[str, Any], value: list[Any] | tuple[Any, ...], path: str) -> None:
    items = schema.get("items")
    prefix = schema.get("prefixItems")
    if isinstance(items, list):  # drafts 4-7: a schema per position
        prefix, items = items, None
    positional = prefix if isinstance(prefix, list) else []
    for index, item in enumerate(value):
        if index < len(positional):
            check(positional[index], item, field_path(path, index))
        elif isinstance(items, Mapping):
            check(items, item, field_path(path, index))
    _check_size(schema, len(value), "Items", value, path)


def _check_properties(schema: Mapping[str, Any], value: Mapping[str, Any], path: str) -> None:
    properties = schema.get("properties")
    properties = properties if isinstance(properties, Mapping) else {}
    required = schema.get("required")
    for key in required if isinstance(required, list) else []:
        if isinstance(key, str) and key not in value:
            raise ConfigError(path, f"expected {key!r} (required), got an object without it: {shown(value)}")
    others = schema.get("additionalProperties", True)
    for key, item in value.items():
        if key in properties:
            check(properties[key], item, field_path(path, key))
        elif others is False:
            raise ConfigError(
                field_path(path, key), f"unknown key; expected some of {sorted(properties)}, got {shown(key)}"
            )
        elif isinstance(others, Mapping):
            check(others, item, field_path(path, key))
