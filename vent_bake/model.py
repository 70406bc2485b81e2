"""Records: frozen dataclasses whose annotations are the cluster file's schema.

A record's fields are checked strictly against their annotations when it is built from
parsed YAML (`build`): no value is coerced (a quoted "6443" is not a port, `true` is not a
number), an unknown key is an error, and every error names the field it is about. The same
annotations give the JSON Schema that `vent-bake schema` prints for editors.

Annotations understood: str, int, float, bool, Literal[...], X | None, list[X], dict[K, V],
another Record, and Annotated[T, Check(...)] for a rule of our own after T's.

This replaces pydantic, which cost a third of a small render's time (about 75 ms to import
and 25 ms to build the cluster file's validators, issue #14) for what this module does.
"""

import copy
import dataclasses
import math
import types
import typing
from typing import Annotated, Any, Callable, Literal, Union

MAX_QUOTED = 60  # an error line quotes at most this much of a value
# Each scalar type: its JSON Schema type, and what an error says a value should be.
_SCALARS = {str: ("string", "a valid string"), int: ("integer", "a valid integer"),
            float: ("number", "a valid number"), bool: ("boolean", "a valid boolean")}


class Invalid(Exception):
    """A value that breaks its field's annotation: where (the keys and indices leading to it),
    and the problem, written for the operator."""

    def __init__(self, where: tuple, problem: str):
        self.where, self.problem = where, problem
        super().__init__(problem)


def quoted(value) -> str:
    """A value as an error line may quote it: repr'd, and cut short."""
    if isinstance(value, int) and value.bit_length() > 200:  # past 60 digits; repr refuses over 4,300
        return f"an integer of {value.bit_length()} bits"
    text = repr(value)
    return text if len(text) <= MAX_QUOTED else f"{text[:MAX_QUOTED]}... ({len(text)} characters)"


@dataclasses.dataclass(frozen=True)
class Check:
    """A rule of our own, for Annotated: `rule(value)` returns the value or raises ValueError
    with the problem; `format` is the JSON Schema format it implies, if one does."""

    rule: Callable[[Any], Any]
    format: str | None = None


class Record:
    """Base of every record: a frozen, keyword-only dataclass (made so on subclassing)."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        dataclasses.dataclass(frozen=True, kw_only=True)(cls)


def setting(default=dataclasses.MISSING, *, description: str = "", ge: int | None = None, le: int | None = None):
    """A record's field: its default (none: required), what it means, and its bounds. Each
    record gets its own copy of a list or dict default."""
    metadata = {"description": description, "ge": ge, "le": le}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _fields(cls) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.init]


# --- building a record from parsed YAML ------------------------------------------------------


def build(cls, data, where: tuple = ()):
    """A `cls` made of data (parsed YAML), every field checked; raise Invalid at the first problem."""
    if not isinstance(data, dict):
        raise Invalid(where, f"input should be a mapping of settings (got {quoted(data)})")
    fields = _fields(cls)
    names = {f.name for f in fields}
    for key in data:
        if key not in names:
            raise Invalid((*where, key), "unknown setting; remove it or check its spelling (`vent-bake schema` lists them all)")
    values = {}
    for f in fields:
        if f.name in data:
            values[f.name] = _value(f.type, data[f.name], (*where, f.name), f.metadata)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise Invalid((*where, f.name), "required setting is missing")
    return cls(**values)


def _value(annotation, value, where: tuple, bounds=None):
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:
        value = _value(args[0], value, where, bounds)
        for check in args[1:]:
            try:
                value = check.rule(value)
            except ValueError as exc:
                raise Invalid(where, str(exc)) from None
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _value(inner, value, where, bounds)
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return value
        *others, last = [repr(a) for a in args]
        choices = f"{', '.join(others)} or {last}" if others else last
        raise Invalid(where, f"input should be {choices} (got {quoted(value)})")
    if origin is list:
        if not isinstance(value, list):
            raise Invalid(where, f"input should be a valid list (got {quoted(value)})")
        return [_value(args[0], item, (*where, i)) for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise Invalid(where, f"input should be a mapping (got {quoted(value)})")
        return {_value(args[0], k, (*where, k)): _value(args[1], v, (*where, k)) for k, v in value.items()}
    if isinstance(annotation, type) and issubclass(annotation, Record):
        return build(annotation, value, where)
    return _scalar(annotation, value, where, bounds or {})


def _scalar(kind: type, value, where: tuple, bounds):
    # bool is an int to Python, but never a number in a cluster file; a float field takes 1 as 1.0.
    accepted = (int, float) if kind is float else kind
    if not isinstance(value, accepted) or (kind is not bool and isinstance(value, bool)):
        raise Invalid(where, f"input should be {_SCALARS[kind][1]} (got {quoted(value)})")
    if kind is float:  # no setting means YAML's .nan or .inf, or an integer past a float's range
        number = float(value) if not isinstance(value, int) or value.bit_length() <= 1000 else math.inf
        if not math.isfinite(number):
            raise Invalid(where, f"input should be a finite number (got {quoted(value)})")
        value = number
    if bounds.get("ge") is not None and value < bounds["ge"]:
        raise Invalid(where, f"input should be at least {bounds['ge']} (got {quoted(value)})")
    if bounds.get("le") is not None and value > bounds["le"]:
        raise Invalid(where, f"input should be at most {bounds['le']} (got {quoted(value)})")
    return value


# --- the JSON Schema the records describe ----------------------------------------------------

def json_schema(cls) -> dict:
    """The JSON Schema (2020-12) of a record: nested records under $defs."""
    defs: dict[str, dict] = {}
    top = _record_schema(cls, defs)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **top, **({"$defs": defs} if defs else {})}


def _record_schema(cls, defs: dict) -> dict:
    properties, required = {}, []
    for f in _fields(cls):
        prop = _type_schema(f.type, defs)
        for key, word in (("ge", "minimum"), ("le", "maximum")):
            if f.metadata.get(key) is not None:
                prop[word] = f.metadata[key]
        if f.metadata.get("description"):
            prop["description"] = f.metadata["description"]
        if f.default is not dataclasses.MISSING:
            prop["default"] = _plain(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            prop["default"] = _plain(f.default_factory())
        else:
            required.append(f.name)
        properties[f.name] = prop
    schema = {"title": cls.__name__, "type": "object", "properties": properties,
              "required": required, "additionalProperties": False}
    if cls.__doc__ and cls.__doc__ is not Record.__doc__:
        schema["description"] = " ".join(cls.__doc__.split())
    return schema


def _type_schema(annotation, defs: dict) -> dict:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:
        schema = _type_schema(args[0], defs)
        formats = [c.format for c in args[1:] if c.format]
        return {**schema, "format": formats[0]} if formats else schema
    if origin in (Union, types.UnionType):
        return {"anyOf": [_type_schema(a, defs) for a in args]}
    if origin is Literal:
        return {"enum": list(args)}
    if origin is list:
        return {"type": "array", "items": _type_schema(args[0], defs)}
    if origin is dict:
        return {"type": "object", "propertyNames": _type_schema(args[0], defs),
                "additionalProperties": _type_schema(args[1], defs)}
    if annotation is type(None):
        return {"type": "null"}
    if isinstance(annotation, type) and issubclass(annotation, Record):
        if annotation.__name__ not in defs:
            defs[annotation.__name__] = _record_schema(annotation, defs)
        return {"$ref": f"#/$defs/{annotation.__name__}"}
    return {"type": _SCALARS[annotation][0]}


def _plain(value):
    """A default as JSON: a record as its settings."""
    if isinstance(value, Record):
        return {f.name: _plain(getattr(value, f.name)) for f in _fields(value)}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
