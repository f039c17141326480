"""Load a pipeline's YAML file. ``section`` validates one section; every task validates all of
them before its stage runs (``operators.factory.check_pipeline``)."""

from __future__ import annotations

import collections.abc
import math
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Iterable, TypeVar

import yaml
from pydantic import BaseModel, BeforeValidator, ValidationError

from dlpipe.errors import ConfigError, validation_message
from dlpipe.storage import shown_url

M = TypeVar("M", bound=BaseModel)


def _yaml_number(value: object) -> object:
    """YAML 1.1 reads ``1e-3`` (no dot) as a string; such a string is a number here. Booleans
    are not: strict models refuse YAML's ``yes`` for a number."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise ValueError("write a number, e.g. 0.002 or 2.0e-3") from None
    return value


def _finite(value: object) -> object:
    """NaN and infinity are refused: every comparison with NaN is false, and an infinite
    threshold turns its check off."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{value} is not a finite number; write one, e.g. 0.002 or 2.0e-3")
    return value


YamlNumber = Annotated[float, BeforeValidator(_yaml_number)]  # a field's own validator judges NaN
YamlFloat = Annotated[float, BeforeValidator(_finite), BeforeValidator(_yaml_number)]  # finite


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load, except that a key given twice in one mapping is an error: YAML would keep the
    last one silently, and ``epochs: 6`` ... ``epochs: 60`` is a mistake, not a setting."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    problem=f"the key {key!r} is given twice, on lines {seen[key]} and {line}; keep one")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        """A value PyYAML cannot build (``2026-02-30``, ``!!float abc``, ``!!int abc``, ``!!bool
        maybe``) raises a bare ValueError or KeyError, with no line: named here, with its line."""
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, KeyError, TypeError) as exc:
            raise yaml.constructor.ConstructorError(problem=_unbuildable(node, exc),
                                                    problem_mark=node.start_mark) from None


def _unbuildable(node: yaml.Node, exc: Exception) -> str:
    """What is wrong with a value PyYAML could not build, and the fix."""
    if node.tag == "tag:yaml.org,2002:timestamp":
        return (f"{node.value!r} is not a valid date ({exc}); write a real date as YYYY-MM-DD, or quote the "
                f"value if it is text")
    if node.tag == "tag:yaml.org,2002:float":
        return f"{node.value!r} is not a number; write one, e.g. 0.002"
    return (f"a tagged value could not be read ({type(exc).__name__}: {exc}); drop the !! tag or give a value "
            f"of that type")


def _where(exc: yaml.YAMLError) -> str:
    """Line, column and problem of a YAML error, without PyYAML's copy of the line: that copy
    is cut to fit, so a URL's password can lose the ``://`` that would get it masked."""
    if isinstance(exc, yaml.reader.ReaderError):  # a character YAML does not allow (NUL, a control character)
        code = exc.character if isinstance(exc.character, int) else ord(exc.character)
        return f"at character {exc.position}: {exc.reason} (U+{code:04X}); remove it"
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    words = ": ".join(w for w in (getattr(exc, "context", None), getattr(exc, "problem", None)) if w)
    if mark is None:
        return f"({words or type(exc).__name__})"
    return f"at line {mark.line + 1}, column {mark.column + 1}: {words}"


# The most values a spec may hold once its aliases are expanded. A spec is a few hundred; an
# alias bomb (ten anchors of ten aliases each) is a few kilobytes of YAML and 10^10 values for
# whatever walks it: error messages, the canonical JSON of a manifest's config, the audit log.
MAX_SPEC_VALUES = 100_000


def _expanded_size(node: yaml.Node, sizes: dict[int, int], open_: set[int]) -> int:
    """How many values ``node`` stands for with every alias expanded (shared nodes counted each
    time they are reached, as a walk of the built document reaches them)."""
    if id(node) in sizes:
        return sizes[id(node)]
    if id(node) in open_:
        raise yaml.constructor.ConstructorError(problem="an alias refers to the collection that holds it (a "
                                                        "recursive value); write the value out",
                                                problem_mark=node.start_mark)
    open_.add(id(node))
    size = 1
    if isinstance(node, yaml.SequenceNode):
        size += sum(_expanded_size(child, sizes, open_) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size += sum(_expanded_size(k, sizes, open_) + _expanded_size(v, sizes, open_) for k, v in node.value)
    open_.discard(id(node))
    sizes[id(node)] = min(size, MAX_SPEC_VALUES + 1)  # a bound keeps the sums small
    return sizes[id(node)]


def _load_yaml(text: str) -> Any:
    """The document, after checking that its aliases do not expand it past MAX_SPEC_VALUES."""
    loader = _UniqueKeyLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, {}, set()) > MAX_SPEC_VALUES:
            raise yaml.constructor.ConstructorError(
                problem=f"with its aliases (*name) expanded, the document holds more than {MAX_SPEC_VALUES:,} "
                        f"values; a pipeline spec holds a few hundred: write the values out, or remove the aliases",
                problem_mark=node.start_mark)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def load_pipeline(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = _load_yaml(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError("pipeline_config", str(path), "point at an existing YAML file") from exc
    except IsADirectoryError as exc:
        raise ConfigError("pipeline_config", str(path), "this is a directory; point at a YAML file in it") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError("pipeline_config", str(path), f"the file is not UTF-8 text ({exc.reason}); "
                          "point at the pipeline's YAML file") from exc
    except yaml.YAMLError as exc:
        raise ConfigError("pipeline_config", str(path), f"fix the YAML {_where(exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError("pipeline_config", str(path), "the file must hold a mapping of sections")
    data["_source"] = str(path)
    return data


def section(pipeline: dict[str, Any], name: str, model: type[M]) -> M:
    """Validate one section; errors name the file, the field path, the value and the rule."""
    raw = pipeline.get(name)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{pipeline.get('_source', '?')}: {name}", raw,
                          f"a section is a mapping of fields, e.g. '{name}: {{field: value}}'; "
                          f"its fields are {sorted(model.model_fields)}")
    try:
        return model(**raw)
    except ValidationError as exc:
        err, *others = exc.errors()
        loc, value, message = validation_message(err)
        field = ".".join(str(p) for p in (name, *loc))
        also = _other_problems(name, model, others)
        if err["type"] == "missing":  # pydantic's input is then the whole section: not helpful
            raise ConfigError(f"{pipeline.get('_source', '?')}: {field}", "(missing)",
                              f"{err['msg']}: add {field}{also}") from None
        if err["type"] == "extra_forbidden":  # a misspelt or misplaced field: say which ones there are
            message += _known_fields(model, loc)
        if isinstance(value, str):
            value = shown_url(value)  # a URL's user and password never reach the message
        raise ConfigError(f"{pipeline.get('_source', '?')}: {field}", value, message + also) from None


OTHER_PROBLEMS_SHOWN = 5


def _other_problems(name: str, model: type[BaseModel], errors: list[dict]) -> str:
    """'; this section has 2 more problems: training.lr (...); ...' so that one edit of a spec can
    fix every field pydantic refused, not one per run. Only field names and rules are shown: the
    first problem's value is the one a message shows, through the credential masking above."""
    if not errors:
        return ""
    shown = []
    for err in errors[:OTHER_PROBLEMS_SHOWN]:
        loc, _, message = validation_message(err)
        field = ".".join(str(p) for p in (name, *loc))
        if err["type"] == "missing":
            message = "missing"
        elif err["type"] == "extra_forbidden":
            close = closest(str(loc[-1]), _fields_at(model, loc) or [])
            message = "an unknown field" + (f"; did you mean {close!r}?" if close else "")
        shown.append(f"{field} ({shown_url(message)})")
    more = len(errors) - len(shown)
    return (f"; this section has {len(errors)} more problem{'s' if len(errors) > 1 else ''}: " + "; ".join(shown)
            + (f"; and {more} more" if more else ""))


def closest(value: str, known: Iterable[str]) -> str | None:
    """The one of ``known`` that ``value`` is most likely a typo of, if any."""
    import difflib

    match = difflib.get_close_matches(value, sorted(known), n=1)
    return match[0] if match else None


def _known_fields(model: type[BaseModel], loc: tuple) -> str:
    """'; did you mean 'epochs'? the fields here are [...]' for an unknown field at ``loc``."""
    fields = _fields_at(model, loc)
    if fields is None:
        return ""
    close = closest(str(loc[-1]), fields)
    return (f"; did you mean {close!r}?" if close else ";") + f" the fields here are {fields}"


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str] | None:
    """The fields of the model that holds ``loc``'s last part, found by following ``loc`` through
    nested models, mappings and lists; None where no model holds it."""
    holder: Any = model
    for part in loc[:-1]:
        holder = _unwrapped(holder)
        origin = typing.get_origin(holder)
        if isinstance(holder, type) and issubclass(holder, BaseModel) and part in holder.model_fields:
            holder = holder.model_fields[part].annotation
        elif origin in (dict, collections.abc.Mapping):
            holder = typing.get_args(holder)[1]
        elif origin in (list, tuple):
            holder = typing.get_args(holder)[0]
        else:
            return None
    holder = _unwrapped(holder)
    if not (isinstance(holder, type) and issubclass(holder, BaseModel)):
        return None
    return sorted(holder.model_fields)


def _unwrapped(annotation: Any) -> Any:
    """``X`` of ``X | None``, ``Optional[X]`` and ``Annotated[X, ...]``."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin is Annotated or (origin in (typing.Union, types.UnionType) and len(args) == 1):
        return _unwrapped(args[0])
    return annotation
