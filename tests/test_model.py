"""Records built strictly from parsed YAML: what the cluster file's corpus (test_config) does
not reach on its own."""

import dataclasses
from typing import Annotated, Literal

import pytest

from vent_bake.model import Check, Invalid, Record, build, json_schema, setting


def _even(value: int) -> int:
    if value % 2:
        raise ValueError(f"{value} is odd")
    return value


class Inner(Record):
    """An inner record."""

    flag: bool = setting(False)


class Outer(Record):
    port: int = setting(6443, ge=1, le=65535)
    price: float | None = setting(None)
    mode: Literal[1, 2] = setting(1)
    even: Annotated[int, Check(_even)] = setting(2)
    tags: list[str] = setting(["a"])
    inner: Inner = setting(Inner())
    name: str = setting(description="required")


def problem(data) -> tuple[str, str]:
    with pytest.raises(Invalid) as caught:
        build(Outer, data)
    return ".".join(map(str, caught.value.where)), caught.value.problem


def test_values_are_taken_as_written_and_defaults_filled():
    built = build(Outer, {"name": "x", "price": 1, "inner": {"flag": True}})
    assert built == Outer(name="x", price=1.0, inner=Inner(flag=True))
    assert type(built.price) is float
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.name = "y"


@pytest.mark.parametrize("data,where,message", [
    ({"name": "x", "port": True}, "port", "input should be a valid integer (got True)"),
    ({"name": "x", "port": "6443"}, "port", "input should be a valid integer (got '6443')"),
    ({"name": "x", "port": 0}, "port", "input should be at least 1 (got 0)"),
    ({"name": "x", "port": 65536}, "port", "input should be at most 65535 (got 65536)"),
    ({"name": "x", "price": False}, "price", "input should be a valid number (got False)"),
    ({"name": "x", "price": float("inf")}, "price", "input should be a finite number (got inf)"),
    ({"name": "x", "price": 10**400}, "price", "input should be a finite number (got an integer of 1329 bits)"),
    ({"name": "x", "port": 16**4000}, "port", "input should be at most 65535 (got an integer of 16001 bits)"),
    ({"name": "x", "mode": True}, "mode", "input should be 1 or 2 (got True)"),
    ({"name": "x", "even": 3}, "even", "3 is odd"),
    ({"name": "x", "tags": ["a", 5]}, "tags.1", "input should be a valid string (got 5)"),
    ({"name": "x", "inner": []}, "inner", "input should be a mapping of settings (got [])"),
    ({"name": "x", "inner": {"flag": 1}}, "inner.flag", "input should be a valid boolean (got 1)"),
    ({"nam": "x"}, "nam", "unknown setting; remove it or check its spelling (`vent-bake schema` lists them all)"),
    ({}, "name", "required setting is missing"),
])
def test_the_first_problem_is_named_where_it_is(data, where, message):
    assert problem(data) == (where, message)


def test_list_defaults_are_not_shared():
    first, second = build(Outer, {"name": "a"}), build(Outer, {"name": "b"})
    first.tags.append("b")
    assert second.tags == ["a"]


def test_schema_states_types_bounds_defaults_and_requirements():
    schema = json_schema(Outer)
    props = schema["properties"]
    assert props["port"] == {"type": "integer", "minimum": 1, "maximum": 65535, "default": 6443}
    assert props["price"] == {"anyOf": [{"type": "number"}, {"type": "null"}], "default": None}
    assert props["inner"] == {"$ref": "#/$defs/Inner", "default": {"flag": False}}
    assert schema["required"] == ["name"] and schema["additionalProperties"] is False
    assert schema["$defs"]["Inner"]["description"] == "An inner record."
