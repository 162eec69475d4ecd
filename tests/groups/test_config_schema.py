"""A game's ``config_schema`` is enforced by ``check_config`` when a config comes in (``groups.schema``).

It was shown on the monitor's form and never checked: ``{"stag": "lots"}`` was accepted where the
schema said ``"type": "number"``. Each keyword is checked here, against jsonschema-rs (a complete
JSON Schema validator, a test dependency) where it says the same, and every game found must
accept exactly what its schema accepts.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import jsonschema_rs
import pytest

from examples.min_effort import MinEffort
from examples.stag_hunt import StagHunt
from groups import MAX_AMOUNT, ConfigError, DecisionGroup, available_games
from groups.schema import check, field_path

NUMBER = {"type": "number"}
POINTS = {"type": "number", "minimum": 0, "maximum": 100}


def refusal(schema: Mapping[str, Any], value: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        check(schema, value)
    return info.value


# (schema, value, accepted); each row is also asked of jsonschema-rs, which must agree
CASES: list[tuple[dict[str, Any], Any, bool]] = [
    (NUMBER, 3, True),
    (NUMBER, 3.5, True),
    (NUMBER, "lots", False),
    (NUMBER, True, False),  # a bool is no number
    (NUMBER, None, False),
    ({"type": "integer"}, 2, True),
    ({"type": "integer"}, 2.5, False),
    ({"type": "integer"}, False, False),
    ({"type": "boolean"}, True, True),
    ({"type": "boolean"}, 1, False),
    ({"type": "boolean"}, "true", False),
    ({"type": "string"}, "a", True),
    ({"type": "string"}, 1, False),
    ({"type": "null"}, None, True),
    ({"type": "null"}, 0, False),
    ({"type": "array"}, [], True),
    ({"type": "array"}, {}, False),
    ({"type": "object"}, {}, True),
    ({"type": "object"}, [], False),
    ({"type": ["number", "null"]}, None, True),
    ({"type": ["number", "null"]}, 1, True),
    ({"type": ["number", "null"]}, "1", False),
    ({"enum": ["stag", "hare"]}, "hare", True),
    ({"enum": ["stag", "hare"]}, "boar", False),
    ({"enum": [1.0, "x"]}, 1, True),
    ({"enum": [1]}, True, False),  # JSON's true is not 1
    ({"enum": [[1, {"a": 2}]]}, [1.0, {"a": 2}], True),
    ({"enum": [[1, {"a": 2}]]}, [1, {"a": 3}], False),
    ({"const": 0}, 0.0, True),
    ({"const": 0}, False, False),
    ({"const": {"a": [1]}}, {"a": [1]}, True),
    ({"const": {"a": [1]}}, {"a": [1], "b": 1}, False),
    (POINTS, 0, True),
    (POINTS, 100, True),
    (POINTS, -0.001, False),
    (POINTS, 100.5, False),
    (POINTS, "50", False),
    ({"minimum": 0}, "-1", True),  # a bound says nothing of a string
    ({"exclusiveMinimum": 0}, 0, False),
    ({"exclusiveMinimum": 0}, 1e-9, True),
    ({"exclusiveMaximum": 1}, 1, False),
    ({"exclusiveMaximum": 1}, 0.999, True),
    ({"type": "string", "minLength": 2, "maxLength": 3}, "ab", True),
    ({"type": "string", "minLength": 2, "maxLength": 3}, "abcd", False),
    ({"type": "string", "minLength": 2}, "é", False),  # characters, not bytes
    ({"type": "string", "maxLength": 1}, "é", True),
    ({"type": "array", "items": NUMBER}, [1, 2.5], True),
    ({"type": "array", "items": NUMBER}, [1, "2"], False),
    ({"type": "array", "items": NUMBER, "minItems": 2, "maxItems": 2}, [1], False),
    ({"type": "array", "items": NUMBER, "minItems": 2, "maxItems": 2}, [1, 2, 3], False),
    ({"type": "array", "items": NUMBER, "minItems": 2, "maxItems": 2}, [1, 2], True),
    ({"type": "array", "prefixItems": [{"type": "string"}, NUMBER]}, ["a", 1, None], True),
    ({"type": "array", "prefixItems": [{"type": "string"}, NUMBER]}, [1, 1], False),
    ({"type": "array", "prefixItems": [{"type": "string"}], "items": NUMBER}, ["a", 1, 2], True),
    ({"type": "array", "prefixItems": [{"type": "string"}], "items": NUMBER}, ["a", "b"], False),
    ({"properties": {"x": NUMBER}}, {"x": 1, "y": "free"}, True),
    ({"properties": {"x": NUMBER}}, {"x": "1"}, False),
    ({"properties": {"x": NUMBER}, "additionalProperties": False}, {"x": 1, "y": 2}, False),
    ({"properties": {"x": NUMBER}, "additionalProperties": NUMBER}, {"x": 1, "y": 2}, True),
    ({"properties": {"x": NUMBER}, "additionalProperties": NUMBER}, {"x": 1, "y": "2"}, False),
    ({"properties": {"x": NUMBER}, "required": ["x"]}, {}, False),
    ({"properties": {"x": NUMBER}, "required": ["x"]}, {"x": 0}, True),
    # keywords not known are ignored (the game's own validate_config checks what they say)
    ({"type": "string", "pattern": "^a+$", "format": "email"}, "zzz", True),
    ({"type": "number", "multipleOf": 3, "description": "d", "default": 3}, 3, True),
]
#: the last rows hold keywords this ignores and jsonschema-rs does not
IGNORED = 2


@pytest.mark.parametrize(("schema", "value", "accepted"), CASES)
def test_each_keyword_takes_what_it_should_and_refuses_the_rest(
    schema: dict[str, Any], value: Any, accepted: bool
) -> None:
    """One value against one keyword; a refusal says what was expected and what arrived."""
    if accepted:
        check(schema, value)
    else:
        error = refusal(schema, value)
        assert error.message.startswith(("expected", "unknown key")), error.message
        assert ", got " in error.message, error.message


@pytest.mark.parametrize("value", [2.0, 0.0, -3.0, 1e20])
def test_an_integer_written_with_a_fraction_is_refused(value: float) -> None:
    """``2.0`` is no ``integer`` here, though JSON Schema takes it: the game would get a float
    (``range(2.0)`` raises) and the check hands on the config as it came, converting nothing."""
    assert jsonschema_rs.is_valid({"type": "integer"}, value)  # the one place this differs
    error = refusal({"type": "integer", "minimum": -5}, value)
    assert error.message == f"expected an integer at least -5, got {value!r}", error.message
    check({"type": "number"}, value)


@pytest.mark.parametrize(("schema", "value", "accepted"), CASES[:-IGNORED])
def test_each_keyword_agrees_with_jsonschema_rs(schema: dict[str, Any], value: Any, accepted: bool) -> None:
    """A complete JSON Schema validator (2020-12) gives the same verdict on every row."""
    assert jsonschema_rs.is_valid(schema, value) is accepted


def test_items_as_a_list_is_one_schema_per_position_as_in_draft_7() -> None:
    """The older tuple form of ``items``, as jsonschema-rs's Draft 7 reads it."""
    schema = {"type": "array", "items": [{"type": "string"}, NUMBER]}
    for value, accepted in ((["a", 1], True), (["a", 1, "extra"], True), ([1, "a"], False)):
        assert jsonschema_rs.Draft7Validator(schema).is_valid(value) is accepted
        if accepted:
            check(schema, value)
        else:
            refusal(schema, value)


def test_the_boolean_exclusive_bounds_of_draft_4_are_ignored() -> None:
    """``exclusiveMinimum: true`` is not a number: ignored, the ``minimum`` still holds."""
    schema = {"type": "number", "minimum": 0, "exclusiveMinimum": True}
    check(schema, 0)
    assert refusal(schema, -1).message == "expected a number at least 0, got -1"


def test_a_type_json_schema_does_not_have_matches_nothing() -> None:
    """A schema's typo (``float``) refuses every value, so it shows at the first config."""
    assert refusal({"type": "float"}, 1.5).message == "expected 'float', got 1.5"


def test_non_finite_numbers_are_no_numbers() -> None:
    """NaN and inf are no JSON; a config given in Python that holds one is refused."""
    for value in (float("nan"), float("inf"), -float("inf"), 10**400):
        refusal(NUMBER, value)


# ---------------------------------------------------------------------- the field and the message


@pytest.mark.parametrize(
    ("schema", "value", "field", "message"),
    [
        (
            {"properties": {"stag": {"type": "number", "minimum": 0}}},
            {"stag": "lots"},
            "config.stag",
            "expected a number at least 0, got 'lots'",
        ),
        (
            {"properties": {"x": {"type": "array", "items": {"properties": {"y": {"type": "integer"}}}}}},
            {"x": [{"y": 1}, {"y": 2}, {"y": 2.5}]},
            "config.x[2].y",
            "expected an integer, got 2.5",
        ),
        (
            {"properties": {"a b": {"type": "string"}, 'q"': NUMBER}},
            {"a b": 1},
            'config["a b"]',
            "expected a string, got 1",
        ),
        (
            {"properties": {'q"': NUMBER}},
            {'q"': None},
            'config["q\\""]',
            "expected a number, got None",
        ),
        (
            {"properties": {"rate": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_AMOUNT}}},
            {"rate": 0},
            "config.rate",
            "expected a number in (0, 1e+09], got 0",
        ),
        (
            {"properties": {"share": {"type": ["number", "null"], "minimum": 0, "exclusiveMaximum": 1}}},
            {"share": 1},
            "config.share",
            "expected a number or null in [0, 1), got 1",
        ),
        (
            {"properties": {"mode": {"enum": ["fast", "slow"]}}},
            {"mode": "medium"},
            "config.mode",
            "expected one of ['fast', 'slow'], got 'medium'",
        ),
        (
            {"properties": {"pair": {"type": "array", "minItems": 2, "maxItems": 2}}},
            {"pair": [1, 2, 3]},
            "config.pair",
            "expected a list of exactly 2 items, got [1, 2, 3]",
        ),
        (
            {"properties": {"name": {"type": "string", "maxLength": 3}}},
            {"name": "abcd"},
            "config.name",
            "expected a string of at most 3 characters, got 'abcd'",
        ),
        (
            {"properties": {"t": {"type": "object", "properties": {"a": NUMBER}, "required": ["a", "b"]}}},
            {"t": {"a": 1}},
            "config.t",
            "expected 'b' (required), got an object without it: {'a': 1}",
        ),
        (
            {"properties": {"t": {"type": "object", "properties": {"a": NUMBER}, "additionalProperties": False}}},
            {"t": {"a": 1, "z": 2}},
            "config.t.z",
            "unknown key; expected some of ['a'], got 'z'",
        ),
    ],
)
def test_a_refusal_names_the_field_and_says_what_was_expected(
    schema: dict[str, Any], value: Any, field: str, message: str
) -> None:
    error = refusal(schema, value)
    assert (error.field, error.message) == (field, message)
    assert str(error) == f"{field}: {message}"


def test_field_path_steps_into_keys_and_indexes() -> None:
    assert field_path(field_path(field_path("config", "x"), 2), "y") == "config.x[2].y"
    assert field_path("config", "2nd") == 'config["2nd"]'


def test_a_value_nested_deep_is_shown_short() -> None:
    """The message shows a few levels of what arrived, never all of it."""
    deep: Any = "bottom"
    for _ in range(1_000):
        deep = [deep]
    error = refusal({"properties": {"x": NUMBER}}, {"x": deep})
    assert error.field == "config.x" and "[[[[" in error.message and len(error.message) < 200


# ---------------------------------------------------------------------- check_config


class Hunt(DecisionGroup):
    """A game that leaves ``validate_config`` to the base class: its schema is all the checking."""

    name = "hunt"
    config_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "stag": {"type": "number", "minimum": 0},
            "rounds": {"type": "integer", "minimum": 1},
            "labels": {"type": "array", "items": {"type": "string", "minLength": 1}, "maxItems": 3},
            "show_chart": {"type": "boolean"},
        },
        "additionalProperties": False,
    }
    default_config: ClassVar[dict[str, Any]] = {"stag": 3, "rounds": 1, "labels": ["A"], "show_chart": True}


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"stag": "lots"}, "config.stag"),
        ({"stag": True}, "config.stag"),
        ({"stag": -1}, "config.stag"),
        ({"rounds": 1.5}, "config.rounds"),
        ({"rounds": 0}, "config.rounds"),
        ({"labels": ["A", ""]}, "config.labels[1]"),
        ({"labels": ["A", "B", "C", "D"]}, "config.labels"),
        ({"labels": "A"}, "config.labels"),
        ({"show_chart": 1}, "config.show_chart"),
        ({"show_chart": "yes"}, "config.show_chart"),
        ({"hare": 1}, "config.hare"),
    ],
)
def test_check_config_refuses_what_the_schema_refuses(config: dict[str, Any], field: str) -> None:
    """A game without its own ``validate_config`` gets its schema enforced, the field named."""
    with pytest.raises(ConfigError) as info:
        Hunt.check_config(config)
    assert info.value.field == field


@pytest.mark.parametrize(
    "config", [{"stag": "lots"}, {"rounds": 0}, {"labels": ["A", ""]}, {"show_chart": "yes"}]
)
def test_a_group_is_built_from_a_config_its_schema_refuses(config: dict[str, Any]) -> None:
    """Building a group (also from what the database holds) runs ``validate_config`` only: a
    config stored before its game's schema said more stays playable."""
    Hunt.validate_config(config)
    assert Hunt(["a"], config=config).config == {**Hunt.default_config, **config}


def test_a_group_is_not_built_from_a_key_its_game_does_not_take() -> None:
    """The base ``validate_config`` refuses an unknown key, at creation and construction as before."""
    with pytest.raises(ConfigError) as info:
        Hunt(["a"], config={"hare": 1})
    assert info.value.field == "config.hare"


def test_check_config_takes_what_the_schema_takes() -> None:
    """Defaults filled in; an integer is an int, never a float (2.0 is refused)."""
    taken = Hunt.check_config({"stag": 0.5, "rounds": 2, "labels": [], "show_chart": False})
    assert taken == {"stag": 0.5, "rounds": 2, "labels": [], "show_chart": False}
    assert type(taken["rounds"]) is int
    assert Hunt.check_config({}) == Hunt.default_config
    with pytest.raises(ConfigError) as info:
        Hunt.check_config({"rounds": 2.0})
    assert info.value.field == "config.rounds" and "got 2.0" in info.value.message


def test_check_config_runs_the_games_own_validate_config_after_the_schema() -> None:
    """A game's override has its say on what the schema took (and what it returns is the config)."""

    class Even(Hunt):
        @classmethod
        def validate_config(cls, config: Mapping[str, Any]) -> dict[str, Any]:
            merged = super().validate_config(config)
            if merged["rounds"] % 2:
                raise ConfigError("config.rounds", "expected an even number of rounds")
            return {**merged, "checked": True}

    with pytest.raises(ConfigError) as info:
        Even.check_config({"rounds": 0})
    assert "an integer at least 1" in info.value.message
    with pytest.raises(ConfigError) as info:
        Even.check_config({"rounds": 3})
    assert "even" in info.value.message
    assert Even.check_config({"rounds": 4})["checked"] is True


def test_a_game_that_declares_no_schema_takes_its_default_keys_as_before() -> None:
    """The base schema (an object, no properties) says nothing of the values."""

    class Free(DecisionGroup):
        default_config: ClassVar[dict[str, Any]] = {"anything": [1, "two", None]}

    assert Free.check_config({"anything": {"goes": True}}) == {"anything": {"goes": True}}


# ---------------------------------------------------------------------- every game's schema


def games() -> dict[str, type[DecisionGroup]]:
    """Every game found (bundled, installed) and the examples."""
    return {**available_games(), "examples.stag_hunt:StagHunt": StagHunt, "examples.min_effort:MinEffort": MinEffort}


@pytest.mark.parametrize("name", sorted(games()))
def test_every_game_takes_its_defaults_under_its_schema(name: str) -> None:
    game = games()[name]
    check(game.config_schema, game.default_config)
    assert game.check_config({}) == game.validate_config({}) == game.default_config


#: numbers near every bound a game's config uses, and values of every other kind
_NUMBERS = (0, 1, -1, 0.5, 1e-9, -1e-9, 2, 3.5, 999.999, 1000, 1000.001, MAX_AMOUNT, -MAX_AMOUNT,
            MAX_AMOUNT + 1, -MAX_AMOUNT - 1, 1e308)
_OTHERS: tuple[Any, ...] = (True, False, None, "1", "", [], {}, [1, 2], {"a": 1})


def _samples(schema: Mapping[str, Any], default: Any) -> Iterator[Any]:
    """Values to try where ``schema`` applies: near its bounds, of the wrong kind, and, in a list
    or an object, the default with one part replaced by each sample of that part."""
    yield from _NUMBERS
    yield from _OTHERS
    if isinstance(default, list) and isinstance(schema.get("items"), Mapping):
        for index, item in enumerate(default):
            for sample in _samples(schema["items"], item):
                yield [*default[:index], sample, *default[index + 1 :]]
        yield default[:-1]
        yield [*default, default[-1]]
    if isinstance(default, dict):
        properties = schema.get("properties", {})
        for key, value in default.items():
            yield {k: v for k, v in default.items() if k != key}
            for sample in _samples(properties.get(key, {}), value):
                yield {**default, key: sample}
        yield {**default, "extra": 1}


def _accepts(validate: Any, config: Any) -> bool:
    try:
        validate(copy.deepcopy(config))
    except ConfigError:
        return False
    return True


@pytest.mark.parametrize("name", sorted(games()))
def test_every_game_accepts_exactly_what_its_schema_accepts(name: str) -> None:
    """For each setting, values near its bounds and of every kind: the game's ``validate_config``
    takes a value if and only if its schema does (the monitor's form shows the schema)."""
    game = games()[name]
    properties = game.config_schema.get("properties", {})
    tried = 0
    for key, default in game.default_config.items():
        for sample in _samples(properties.get(key, {}), default):
            config = {key: sample}
            by_schema = _accepts(lambda c: check(game.config_schema, {**game.default_config, **c}), config)
            assert _accepts(game.validate_config, config) is by_schema, (name, config, by_schema)
            tried += 1
    assert tried >= 25 * len(game.default_config)
