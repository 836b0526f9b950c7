"""YAML specs (TAO 5) loaded against a schema of nested dataclasses.

A schema is a dataclass whose fields are typed ``int``, ``float``, ``bool``, ``str``,
``Literal["a", "b"]`` (a choice), another schema dataclass (a section), ``list[T]``,
``dict[str, T]`` or ``T | None``; a field's default is used when the key is absent, and a field
without a default must be given; a value written ``???`` (OmegaConf's MISSING) must be filled by
an override. Errors name the file, line and column of the offending node (PyYAML's composed node
tree keeps them), e.g. ``spec.yaml:3:5: unknown key "rotaton" in spatial_aug (did you mean
"rotation"?)``. Overrides edit the node tree before it is built, so their values go through the
same checks; nodes an override made are reported as ``override "a.b=v"`` instead of a position.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing

import yaml

from taoctl.errors import SpecError, did_you_mean

_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_BOOL = "tag:yaml.org,2002:bool"
_NULL = "tag:yaml.org,2002:null"
_EXPONENT_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


_MISSING = "???"


class _Loader:
    def __init__(self, filename: str):
        self.filename = filename
        self.constructor = yaml.constructor.SafeConstructor()
        self.override_of: dict[int, object] = {}  # id(node) -> the Override that made it
        self.origins: dict[str, str] = {}  # concrete path of each scalar given -> where it was given

    def where(self, node) -> str:
        override = self.override_of.get(id(node))
        if override is not None:
            return f'override "{override.text}"'
        mark = node.start_mark
        return f"{self.filename}:{mark.line + 1}:{mark.column + 1}"

    def error(self, node, message: str) -> SpecError:
        return SpecError(f"{self.where(node)}: {message}")

    def scalar(self, node):
        return self.constructor.construct_object(node, deep=True)

    def got(self, node) -> str:
        if isinstance(node, yaml.MappingNode):
            return "a section of key: value pairs"
        if isinstance(node, yaml.SequenceNode):
            return "a list"
        if node.tag == _NULL:
            return "nothing (null)"
        return f'"{node.value}"'

    def value(self, node, annotation, name: str, path: str):
        if isinstance(node, yaml.ScalarNode) and node.tag == _STR and node.value == _MISSING:
            raise self.error(node, f"missing required value {path} ({_MISSING} in the spec: set it in the file or "
                                   f"as an override {path}=...)")
        origin = typing.get_origin(annotation)
        args = typing.get_args(annotation)
        if origin in (typing.Union, types.UnionType):
            if isinstance(node, yaml.ScalarNode) and node.tag == _NULL and type(None) in args:
                return None
            others = [a for a in args if a is not type(None)]
            if len(others) == 1:
                return self.value(node, others[0], name, path)
            # e.g. `angle: float | list[float]`: the alternatives of the node's shape (a list,
            # a section, a scalar); with one left its own error is the precise one.
            shaped = [a for a in others if self.shape(a) == self.shape_of(node)]
            if len(shaped) == 1:
                return self.value(node, shaped[0], name, path)
            for alternative in shaped:
                try:
                    return self.value(node, alternative, name, path)
                except SpecError:
                    continue
            words = " or ".join(self.words(a) for a in others)
            raise self.error(node, f"{name} expects {words}, got {self.got(node)}")
        if dataclasses.is_dataclass(annotation):
            return self.section(node, annotation, path)
        if origin is list:
            if not isinstance(node, yaml.SequenceNode):
                raise self.error(node, f"{name} expects a list, got {self.got(node)}")
            return [self.value(item, args[0], name, f"{path}[{i}]") for i, item in enumerate(node.value)]
        if origin is dict:
            if not isinstance(node, yaml.MappingNode):
                raise self.error(node, f"{name} expects a section of key: value pairs, got {self.got(node)}")
            result = {}
            for key_node, value_node in node.value:
                key = str(self.scalar(key_node))
                if key in result:
                    raise self.error(key_node, f'key "{key}" set twice in {path}')
                result[key] = self.value(value_node, args[1], key, f"{path}.{key}")
            return result
        if not isinstance(node, yaml.ScalarNode):
            raise self.error(node, f"{name} expects {self.words(annotation)}, got {self.got(node)}")
        self.origins[path] = self.where(node)
        if origin is typing.Literal:
            value = self.scalar(node)
            if value not in args:
                choices = ", ".join(str(a) for a in args)
                hint = did_you_mean(str(value), [str(a) for a in args])
                raise self.error(node, f"{name} expects one of {choices}, got {self.got(node)}{hint}")
            return value
        tag = node.tag
        if annotation is bool and tag == _BOOL:
            return self.scalar(node)
        if annotation is int and tag == _INT:
            return self.scalar(node)
        if annotation is float and tag in (_INT, _FLOAT):
            return float(self.scalar(node))
        if annotation is float and tag == _STR and node.style is None and _EXPONENT_FLOAT.match(node.value):
            # YAML 1.1 reads `lr: 1e-4` as a string; TAO 5's OmegaConf, and users, take it as a number.
            return float(node.value)
        if annotation is str and tag in (_STR, _INT, _FLOAT):
            return node.value  # the text as written: `version: 1.10` stays "1.10"
        if annotation in (bool, int, float, str):
            raise self.error(node, f"{name} expects {self.words(annotation)}, got {self.got(node)}")
        raise TypeError(f"schema field {path}: unsupported type {annotation!r}")

    @staticmethod
    def shape(annotation) -> str:
        origin = typing.get_origin(annotation)
        if origin is list:
            return "list"
        if origin is dict or dataclasses.is_dataclass(annotation):
            return "section"
        return "scalar"

    @staticmethod
    def shape_of(node) -> str:
        if isinstance(node, yaml.SequenceNode):
            return "list"
        return "section" if isinstance(node, yaml.MappingNode) else "scalar"

    @staticmethod
    def words(annotation) -> str:
        origin = typing.get_origin(annotation)
        if origin is list:
            return "a list"
        if origin is dict or dataclasses.is_dataclass(annotation):
            return "a section of key: value pairs"
        if origin is typing.Literal:
            return "one of " + ", ".join(str(a) for a in typing.get_args(annotation))
        return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
            annotation, "a single value")

    def section(self, node, schema, path: str):
        label = path or "the top level"
        if not isinstance(node, yaml.MappingNode):
            if not path:
                raise self.error(node, f"expected key: value pairs at the top level, got {self.got(node)}")
            raise self.error(node, f"{path.rsplit('.', 1)[-1]} expects a section of key: value pairs, "
                                   f"got {self.got(node)}")
        hints = typing.get_type_hints(schema)
        fields = {f.name: f for f in dataclasses.fields(schema)}
        given: dict[str, object] = {}
        for key_node, value_node in node.value:
            key = str(self.scalar(key_node))
            if key in given:
                raise self.error(key_node, f'key "{key}" set twice in {label}')
            field = fields.get(key)
            if field is None:
                raise self.error(key_node, f'unknown key "{key}" in {label}{did_you_mean(key, fields)}')
            child = f"{path}.{key}" if path else key
            given[key] = self.value(value_node, hints[key], key, child)
        missing = [name for name, f in fields.items() if name not in given
                   and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if missing:
            where = ", ".join(f"{path}.{m}" if path else m for m in missing)
            noun = "value" if len(missing) == 1 else "values"
            raise SpecError(f"{self.filename}: missing required {noun} {where}")
        return schema(**given)


def _compose(text: str, filename: str):
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{filename}:{mark.line + 1}:{mark.column + 1}" if mark else filename
        problem = exc.problem or exc.context or "invalid YAML"
        raise SpecError(f"{where}: YAML syntax error: {problem}") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{filename}: YAML syntax error: {exc}") from None


def load(text: str, schema, filename: str, required=(), overrides=()):
    """Build a ``schema`` instance from YAML text after applying ``overrides`` (Override objects).

    Returns (spec, origins): origins maps the concrete path of every scalar the file or an
    override gave (``a.b[0]``) to where it was given (``FILE:LINE:COL`` or ``override "a.b=v"``).
    Raises SpecError with line:col.
    """
    root = _compose(text, filename)
    loader = _Loader(filename)
    if root is None:
        root = yaml.MappingNode(tag="tag:yaml.org,2002:map", value=[],
                                start_mark=yaml.Mark(filename, 0, 0, 0, None, None))
    for override in overrides:
        _apply_override(root, schema, override, loader)
    spec = loader.section(root, schema, "")
    _interpolate(spec, spec, "", loader.origins, filename)
    missing = [p for p in required if not any(v not in (None, "") for _, v in resolve(spec, p))]
    if missing:
        noun = "value" if len(missing) == 1 else "values"
        raise SpecError(f"{filename}: missing required {noun} {', '.join(missing)}")
    return spec, loader.origins


_REFERENCE = re.compile(r"^\$\{([A-Za-z_][\w.]*)\}$")


def _interpolate(root, obj, prefix: str, origins: dict, filename: str) -> None:
    """OmegaConf's ``${a.b}``: a string value that is exactly a reference takes the referenced value
    (e.g. NeMo's ``tokenizer_name: ${model.language_model.pretrained_model_name}``)."""
    for field in dataclasses.fields(obj):
        value = getattr(obj, field.name)
        path = f"{prefix}{field.name}"
        if dataclasses.is_dataclass(value):
            _interpolate(root, value, f"{path}.", origins, filename)
        elif isinstance(value, str) and (match := _REFERENCE.match(value)):
            target = root
            for part in match.group(1).split("."):
                if not dataclasses.is_dataclass(target) or not hasattr(target, part):
                    raise SpecError(f"{origins.get(path, filename)}: {path}: ${{{match.group(1)}}} names no value "
                                    f"of this spec")
                target = getattr(target, part)
            if dataclasses.is_dataclass(target):
                raise SpecError(f"{origins.get(path, filename)}: {path}: ${{{match.group(1)}}} is a section, "
                                f"not a value")
            setattr(obj, field.name, target)


def _alternatives(annotation) -> list:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [a for a in typing.get_args(annotation) if a is not type(None)]
    return [annotation]


def _step(annotation, part: str):
    """How an override key part goes into a value of this type: ("field", dataclass),
    ("key", dict value type), ("index", list item type), or None for a single value."""
    options = _alternatives(annotation)
    if part.isdigit():
        for option in options:
            if typing.get_origin(option) is list:
                return "index", typing.get_args(option)[0]
    for option in options:
        if dataclasses.is_dataclass(option):
            return "field", option
    for option in options:
        if typing.get_origin(option) is dict:
            return "key", typing.get_args(option)[1]
    for option in options:
        if typing.get_origin(option) is list:
            return "list", typing.get_args(option)[0]
    return None


def _key_index(mapping, key: str) -> int | None:
    for i, (key_node, _) in enumerate(mapping.value):
        if str(key_node.value) == key:
            return i
    return None


def _apply_override(root, schema, override, loader: _Loader) -> None:
    """Set ``override`` in the composed node tree, checking its key against ``schema``."""
    def made(node):  # a node the override contributes: errors about it name the override
        loader.override_of[id(node)] = override
        for child in (node.value if isinstance(node, yaml.SequenceNode) else
                      [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else []):
            made(child)
        return node

    mark = root.start_mark
    node, annotation, where = root, schema, ""
    parts = override.parts
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        # the step before refused to go inside a single value or a list by name
        shape, child_annotation = _step(annotation, part)
        label = where or "the top level"
        if shape == "field":
            hints = typing.get_type_hints(child_annotation)
            if part not in hints:
                raise override.error(f'unknown key "{part}" in {label}{did_you_mean(part, hints)}')
            child_annotation = hints[part]
        here = f"{where}[{part}]" if shape == "index" else (f"{where}.{part}" if where else part)
        if shape == "index":
            index, size = int(part), len(node.value)
            appending = index == size and override.mode != "set"
            if index > size or (index == size and not appending):
                raise override.error(f"{where} has {size} element{'s' * (size != 1)}, no [{index}]"
                                     + (f"; +{override.key}=... adds one" if index == size else ""))
            existing = None if appending else node.value[index]
        else:
            slot = _key_index(node, part)
            existing = None if slot is None else node.value[slot][1]
        if last:
            if existing is not None and override.mode == "add":
                raise override.error(f"{here} is already set ({loader.where(existing)}); "
                                     f"use {override.key}=... to change it")
            new = made(_compose_value(override, mark))
        else:
            following = _step(child_annotation, parts[i + 1])
            if following is None:
                raise override.error(f"{here} is a single value, not a section")
            if following[0] == "list":
                raise override.error(f"{here} is a list: name an element by its index ({here}[0]...)")
            kind = yaml.SequenceNode if following[0] == "index" else yaml.MappingNode
            if isinstance(existing, kind):
                new = existing
            elif existing is None or (isinstance(existing, yaml.ScalarNode) and existing.tag == _NULL):
                tag = "tag:yaml.org,2002:seq" if kind is yaml.SequenceNode else "tag:yaml.org,2002:map"
                new = made(kind(tag=tag, value=[], start_mark=mark))
            else:
                raise override.error(f"{here} is {loader.got(existing)} in the spec ({loader.where(existing)}), "
                                     f"not {'a list' if kind is yaml.SequenceNode else 'a section'}")
        if new is not existing:
            if shape == "index":
                if existing is None:
                    node.value.append(new)
                else:
                    node.value[int(part)] = new
            elif existing is None:
                node.value.append((made(yaml.ScalarNode(_STR, part, start_mark=mark)), new))
            else:
                node.value[slot] = (node.value[slot][0], new)
        node, annotation, where = new, child_annotation, here


def _compose_value(override, mark):
    """The override's value as a YAML node; ``key=`` is an empty string, as in Hydra."""
    if override.value == "":
        return yaml.ScalarNode(_STR, "", style="'", start_mark=mark)
    try:
        node = yaml.compose(override.value, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        raise override.error(f"value is not valid YAML ({exc.problem or exc.context})") from None
    return node if node is not None else yaml.ScalarNode(_NULL, "", start_mark=mark)


def resolve(spec, path: str) -> list[tuple[str, object]]:
    """Values at a dotted path, one per list element on the way, each with its concrete path."""
    found = []

    def walk(obj, parts, prefix):
        if obj is None:
            return
        value = getattr(obj, parts[0]) if dataclasses.is_dataclass(obj) else obj.get(parts[0])
        here = f"{prefix}.{parts[0]}" if prefix else parts[0]
        items = list(enumerate(value)) if isinstance(value, list) else [(None, value)]
        for index, item in items:
            item_path = here if index is None else f"{here}[{index}]"
            if len(parts) > 1:
                walk(item, parts[1:], item_path)
            else:
                found.append((item_path, item))

    walk(spec, path.split("."), "")
    return found


def is_numeric(schema, path: str) -> bool:
    """Whether a declared dotted path (lists and dicts stepped through) ends in numbers only;
    KeyError when the schema has no such field."""
    options = [schema]
    for part in path.split("."):
        found = []
        pending = list(options)
        while pending:
            option = pending.pop()
            if dataclasses.is_dataclass(option):
                hints = typing.get_type_hints(option)
                if part in hints:
                    found.append(hints[part])
            elif typing.get_origin(option) is dict:
                found.append(typing.get_args(option)[1])
            elif typing.get_origin(option) in (list, typing.Union, types.UnionType):
                pending.extend(a for a in typing.get_args(option) if a is not type(None))
        if not found:
            raise KeyError(f"{schema.__name__} has no field {path!r}")
        options = found
    leaves, pending = [], list(options)
    while pending:
        option = pending.pop()
        if typing.get_origin(option) in (list, typing.Union, types.UnionType):
            pending.extend(a for a in typing.get_args(option) if a is not type(None))
        else:
            leaves.append(option)
    return all(leaf in (int, float) for leaf in leaves)


def top_level_names(text: str) -> list[str] | None:
    """Top-level keys of YAML text, or None when it is not a YAML mapping."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None
    if root is None:
        return []
    if not isinstance(root, yaml.MappingNode):
        return None
    return [str(k.value) for k, _ in root.value]
