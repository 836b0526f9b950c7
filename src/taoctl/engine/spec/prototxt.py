"""Protobuf text-format specs: parse into a message, errors as one ``FILE:LINE:COL: message`` line.

google.protobuf's text parser knows the position of every token but neither reports where each
field was set nor words its errors for a TAO user ('Message type "makenet.ModelConfig" has no
field named "n_layrs"'). ``_Parser`` extends it (the private ``text_format._Parser`` hooks,
stable since protobuf 3) to record the path and position of every field it fills, to check
unknown fields, duplicates and value types itself with messages that name the spec's own
fields, and to remember what is left for the legacy-field pass. Paths name the elements of
repeated fields by index and map entries by key: ``data_sources[0].tfrecords_path``,
``target_class_config[car].clustering_config.coverage_threshold``.

Command-line overrides (``apply_override``) take their values as YAML, as Hydra does, so a string
needs no quotes (``train_config.train_dataset_path=/data/train``) and a repeated field takes a
list (``model_config.freeze_blocks=[0,1]``).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable

import yaml
from google.protobuf import descriptor, text_format

from taoctl.engine.spec.proto import taoctl_options_pb2
from taoctl.errors import SpecError, did_you_mean

FD = descriptor.FieldDescriptor

_TYPE_WORDS = {
    FD.TYPE_UINT32: "an unsigned integer", FD.TYPE_UINT64: "an unsigned integer",
    FD.TYPE_FIXED32: "an unsigned integer", FD.TYPE_FIXED64: "an unsigned integer",
    FD.TYPE_INT32: "an integer", FD.TYPE_INT64: "an integer", FD.TYPE_SINT32: "an integer",
    FD.TYPE_SINT64: "an integer", FD.TYPE_SFIXED32: "an integer", FD.TYPE_SFIXED64: "an integer",
    FD.TYPE_FLOAT: "a number", FD.TYPE_DOUBLE: "a number",
    FD.TYPE_BOOL: "true or false",
    FD.TYPE_STRING: 'a quoted string (e.g. "text")', FD.TYPE_BYTES: 'a quoted string (e.g. "text")',
}
_INTEGER_LITERAL = re.compile(r"^[+-]?(0[xX][0-9a-fA-F]+|\d+)$")
_IDENTIFIER = re.compile(r"^[A-Za-z_]\w*$")
_PATH_PART = re.compile(r"([^.\[\]]+)(?:\[([^\[\]]*)\])?")
_EXPONENT_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")
_NON_FINITE = {"nan", "inf", "+inf", "-inf", "infinity", "+infinity", "-infinity"}
_INTEGER_TYPES = {FD.CPPTYPE_INT32, FD.CPPTYPE_INT64, FD.CPPTYPE_UINT32, FD.CPPTYPE_UINT64}
_NUMBER_TYPES = _INTEGER_TYPES | {FD.CPPTYPE_FLOAT, FD.CPPTYPE_DOUBLE}
_CONSTRUCTOR = yaml.constructor.SafeConstructor()


@dataclasses.dataclass
class FieldSite:
    """Where one field of the spec was set: its concrete path (``a[0].b[car].c``), descriptor,
    position and owner."""

    path: str
    field: descriptor.FieldDescriptor
    line: int
    column: int
    owner: object  # the message the field belongs to
    token: str  # the value's first token (scalars), for the legacy checks


def _where(stack: list[str], message) -> str:
    return ".".join(stack) if stack else f"the top level ({message.DESCRIPTOR.name})"


def type_words(field: descriptor.FieldDescriptor) -> str:
    if field.type == FD.TYPE_ENUM:
        return "one of " + ", ".join(v.name for v in field.enum_type.values)
    if field.type in (FD.TYPE_MESSAGE, FD.TYPE_GROUP):
        return 'a section in braces ("{ ... }")'
    return _TYPE_WORDS[field.type]


class _Parser(text_format._Parser):  # noqa: SLF001 - see the module docstring
    def __init__(self, filename: str):
        super().__init__()
        self.filename = filename
        self.stack: list[str] = []  # path of the message being filled
        self.opened: list[int] = []  # the line where each open section started
        self.seen: list[dict[str, int]] = [{}]  # non-repeated fields set in each open message: line
        self.sites: list[FieldSite] = []
        self.tokenizer = None
        self._pending: tuple[int, int] = (0, 0)

    def error(self, line: int, column: int, message: str) -> SpecError:
        return SpecError(f"{self.filename}:{line}:{column}: {message}")

    def _MergeField(self, tokenizer, message):  # noqa: N802 - protobuf's hook name
        self.tokenizer = tokenizer
        line, column, name = tokenizer._line + 1, tokenizer._column + 1, tokenizer.token
        fields = message.DESCRIPTOR.fields_by_name
        field = fields.get(name)
        if field is None:
            where = _where(self.stack, message)
            if _IDENTIFIER.match(name):
                raise self.error(line, column, f'unknown field "{name}" in {where}{did_you_mean(name, fields)}')
            if name in ("}", ">") and not self.stack:
                raise self.error(line, column, f'unmatched "{name}": no section is open here')
            raise self.error(line, column, f'expected a field name in {where}, got "{name}"')
        oneof = field.containing_oneof
        if oneof is not None:
            other = message.WhichOneof(oneof.name)
            if other not in (None, name):
                raise self.error(line, column, f'{_where(self.stack, message)} sets both "{other}" and "{name}"; '
                                                f"{oneof.name} takes only one of them")
        if not field.is_repeated:
            first = self.seen[-1].get(name)
            if first is not None:
                raise self.error(line, column, f'field "{name}" set twice in {_where(self.stack, message)} '
                                                f"(first at line {first}); it takes one value")
            self.seen[-1][name] = line
        self._pending = (line, column)
        super()._MergeField(tokenizer, message)

    def _path(self, field) -> str:
        return ".".join(self.stack + [field.name])

    def _MergeMessageField(self, tokenizer, message, field):  # noqa: N802
        line, column = self._pending
        if tokenizer.token not in ("{", "<"):
            raise self.error(tokenizer._line + 1, tokenizer._column + 1,
                             f'{field.name} expects {type_words(field)}, got "{tokenizer.token}"')
        if field.is_repeated:
            part = f"{field.name}[{len(getattr(message, field.name))}]"
        else:
            part = field.name
        first = len(self.sites)
        self.sites.append(FieldSite(".".join(self.stack + [part]), field, line, column, message, ""))
        self.stack.append(part)
        self.opened.append(line)
        self.seen.append({})
        super()._MergeMessageField(tokenizer, message, field)
        self.seen.pop()
        self.opened.pop()
        self.stack.pop()
        if is_map(field):
            self._rekey_map_entry(message, field, first)

    def _rekey_map_entry(self, message, field, first: int) -> None:
        """protobuf parses a map entry into a scratch ``{key, value}`` message and then copies it
        into the map: name the entry's sites ``name[key]`` and point them at the map's value."""
        entry_path = self.sites[first].path
        inner = self.sites[first + 1:]
        key_site = next((s for s in inner if s.path == f"{entry_path}.key"), None)
        key = key_site.owner.key if key_site else field.message_type.fields_by_name["key"].default_value
        base = f"{entry_path[:entry_path.rindex('[')]}[{key}]"
        value_path = f"{entry_path}.value"
        rekeyed = [dataclasses.replace(self.sites[first], path=base)]
        for site in inner:
            if site.path == value_path:
                rekeyed.append(dataclasses.replace(site, path=base))
            elif site.path.startswith(value_path + "."):
                relative = site.path[len(value_path) + 1:]
                owner = _descend(getattr(message, field.name)[key], _split(relative)[:-1])
                rekeyed.append(dataclasses.replace(site, path=f"{base}.{relative}", owner=owner))
        self.sites[first:] = rekeyed

    def _MergeScalarField(self, tokenizer, message, field):  # noqa: N802
        line, column = self._pending
        value_line, value_column, token = tokenizer._line + 1, tokenizer._column + 1, tokenizer.token
        try:
            super()._MergeScalarField(tokenizer, message, field)
        except text_format.ParseError as exc:
            detail = ""
            if "out of range" in str(exc):
                detail = " (out of range)"
            quote = token[:1]
            if quote in ("'", '"') and (len(token) < 2 or token[-1] != quote):
                raise self.error(value_line, value_column,
                                 f"{field.name}: string is not closed (a {quote} is missing on this line)") from None
            got = token if token else "end of file"
            raise self.error(value_line, value_column,
                             f'{field.name} expects {type_words(field)}, got "{got}"{detail}') from None
        path = self._path(field)
        if field.is_repeated:
            path += f"[{len(getattr(message, field.name)) - 1}]"
        self.sites.append(FieldSite(path, field, line, column, message, token))


def _rewrite(parser: _Parser, exc: text_format.ParseError) -> SpecError:
    """Word one of protobuf's own (syntax) errors for the user, keeping its position."""
    text = str(exc)
    text = re.sub(r"^\d+(:\d+)? : ", "", text)  # protobuf's own "LINE:COL : " prefix
    text = re.sub(r"^'.*?': ", "", text)  # and the quoted source line
    line, column = exc.GetLine() or 0, exc.GetColumn() or 0
    tokenizer = parser.tokenizer
    if text == 'Expected "}".' and parser.opened and tokenizer is not None and tokenizer.AtEnd():
        open_line = parser.opened[-1]
        section = ".".join(parser.stack)
        return parser.error(line, column, f'end of file inside "{section} {{" opened at line {open_line}:'
                                          f' a "}}" is missing')
    text = text.rstrip(".")
    if text[:1].isupper():
        text = text[0].lower() + text[1:]
    return parser.error(line, column, f"syntax error: {text}")


def parse(text: str, message, filename: str) -> list[FieldSite]:
    """Fill ``message`` from spec text; return where each field was set. Raises SpecError."""
    parser = _Parser(filename)
    try:
        parser.ParseLines(text.split("\n"), message)
    except text_format.ParseError as exc:
        raise _rewrite(parser, exc) from None
    return parser.sites


def apply_legacy(sites: Iterable[FieldSite], filename: str, warn: Callable[[str], None]) -> list[FieldSite]:
    """Warn about and clear every legacy value: fields marked ``[deprecated = true]`` and
    non-whole values of ``[(taoctl.legacy_float) = true]`` fields. Returns the sites kept."""
    kept = []
    for site in sites:
        kept.append(site)
        options = site.field.GetOptions()
        owner_name = site.owner.DESCRIPTOR.name
        if options.deprecated:
            warn(f'{filename}:{site.line}:{site.column}: warning: legacy field "{site.field.name}" in '
                 f"{owner_name} ignored (older TAO releases accepted it; current TAO does not use it)")
            site.owner.ClearField(site.field.name)
            kept.pop()
        elif options.Extensions[taoctl_options_pb2.legacy_float] and not _INTEGER_LITERAL.match(site.token):
            value = getattr(site.owner, site.field.name)
            if float(value).is_integer():
                continue
            warn(f"{filename}:{site.line}:{site.column}: warning: legacy value {site.token} of "
                 f'"{site.field.name}" in {owner_name} ignored (older TAO releases took a float; '
                 f"current TAO takes a whole number), the default is used")
            site.owner.ClearField(site.field.name)
            kept.pop()
    return kept


def is_set(message, field_name: str) -> bool:
    field = message.DESCRIPTOR.fields_by_name[field_name]
    if field.is_repeated:
        return len(getattr(message, field_name)) > 0
    if field.has_presence:
        return message.HasField(field_name)
    # proto3 scalars without presence: TAO treats the zero value as "not given" too.
    return getattr(message, field_name) != field.default_value


def is_map(field) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def _split(path: str) -> list[tuple[str, str | None]]:
    """``a.b[0].c`` as [("a", None), ("b", "0"), ("c", None)]."""
    return [(m.group(1), m.group(2)) for m in _PATH_PART.finditer(path)]


def _map_key(field, text: str):
    key_field = field.message_type.fields_by_name["key"]
    return text if key_field.cpp_type == FD.CPPTYPE_STRING else int(text)


def _descend(message, parts: list[tuple[str, str | None]]):
    for name, sub in parts:
        field = message.DESCRIPTOR.fields_by_name[name]
        message = getattr(message, name)
        if sub is not None:
            message = message[_map_key(field, sub) if is_map(field) else int(sub)]
    return message


def _walk(message, path: str, include_unset: bool) -> list[tuple[str, object]]:
    found: list[tuple[str, object]] = []

    def walk(msg, parts: list[str], prefix: str):
        name, rest = parts[0], parts[1:]
        field = msg.DESCRIPTOR.fields_by_name.get(name)
        if field is None:
            raise KeyError(f"{msg.DESCRIPTOR.name} has no field {name!r} (path {path!r})")
        here = f"{prefix}.{name}" if prefix else name
        leaf_scalar = not rest and field.message_type is None
        if not (is_set(msg, name) or (include_unset and leaf_scalar)):
            return
        value = getattr(msg, name)
        if is_map(field):
            items = [(f"{here}[{key}]", value[key]) for key in sorted(value)]
        elif field.is_repeated:
            items = [(f"{here}[{index}]", item) for index, item in enumerate(value)]
        else:
            items = [(here, value)]
        for item_path, item in items:
            if rest:
                walk(item, rest, item_path)
            else:
                found.append((item_path, item))

    walk(message, path.split("."), "")
    return found


def resolve(message, path: str) -> list[tuple[str, object]]:
    """Values at a dotted path (``a.b.c``), one per element of any repeated field or map on the
    way, each with its concrete path (``a[0].b[car].c``); unset parts yield nothing."""
    return _walk(message, path, include_unset=False)


def values_at(message, path: str) -> list[tuple[str, object]]:
    """Like ``resolve``, but a scalar at the end of the path counts even at its zero value, so
    a value the file wrote as 0 is seen (callers keep only the paths the file or an override set)."""
    return _walk(message, path, include_unset=True)


def is_numeric(message_class, path: str) -> bool:
    """Whether a declared dotted path ends in a number field; KeyError when there is no such field."""
    descriptor_ = message_class.DESCRIPTOR
    field = None
    for name in path.split("."):
        if field is not None:
            if field.message_type is None:
                raise KeyError(f"{message_class.DESCRIPTOR.name}: {path!r} goes inside a single value")
            descriptor_ = field.message_type
            if is_map(field):
                descriptor_ = field.message_type.fields_by_name["value"].message_type
                if descriptor_ is None:
                    raise KeyError(f"{message_class.DESCRIPTOR.name}: {path!r} goes inside a map of single values")
        field = descriptor_.fields_by_name.get(name)
        if field is None:
            raise KeyError(f"{message_class.DESCRIPTOR.name} has no field {path!r}")
    if is_map(field):
        field = field.message_type.fields_by_name["value"]
    return field.cpp_type in _NUMBER_TYPES


def missing_required(message, paths: Iterable[str]) -> list[str]:
    """The required paths that are not set (through repeated fields: per element)."""
    missing = []
    for path in paths:
        parts = path.split(".")
        parents = resolve(message, ".".join(parts[:-1])) if len(parts) > 1 else [("", message)]
        if len(parts) > 1 and not parents:
            missing.append(path)
            continue
        for parent_path, parent in parents:
            if not is_set(parent, parts[-1]):
                missing.append(f"{parent_path}.{parts[-1]}" if parent_path else parts[-1])
    return missing


def top_level_names(text: str) -> list[str] | None:
    """Names of the top-level fields in spec text, or None when it does not tokenize."""
    names = []
    depth = 0
    try:
        tokenizer = text_format.Tokenizer(text.split("\n"))
        previous = None
        while not tokenizer.AtEnd():
            token = tokenizer.token
            if token in ("{", "<"):
                if depth == 0 and previous and _IDENTIFIER.match(previous):
                    names.append(previous)
                depth += 1
            elif token in ("}", ">"):
                depth -= 1
            elif token == ":" and depth == 0 and previous and _IDENTIFIER.match(previous):
                names.append(previous)
            previous = token
            tokenizer.NextToken()
    except text_format.ParseError:
        return None
    return names


# -- command-line overrides ------------------------------------------------------------------


def apply_override(message, override, origins: dict[str, str]) -> None:
    """Set one Override (see taoctl.engine.spec) in ``message``; ``origins`` (concrete path ->
    where it was set) says what the file sets and learns what the override sets."""
    parts = list(override.parts)
    msg, where, i = message, "", 0
    while True:
        name = parts[i]
        i += 1
        fields = msg.DESCRIPTOR.fields_by_name
        field = fields.get(name)
        if field is None:
            label = where or f"the top level ({msg.DESCRIPTOR.name})"
            raise override.error(f'unknown field "{name}" in {label}{did_you_mean(name, fields)}')
        if field.GetOptions().deprecated:
            raise override.error(f'"{name}" in {msg.DESCRIPTOR.name} is a legacy field current TAO does not use')
        here = f"{where}.{name}" if where else name
        sub = None
        if field.is_repeated and i < len(parts):
            sub, i = parts[i], i + 1
            if not is_map(field) and not sub.isdigit():
                raise override.error(f"{here} is a list: name an element by its index ({here}[0]...)")
            here = f"{here}[{sub}]"
        last = i == len(parts)
        value_field = field.message_type.fields_by_name["value"] if is_map(field) else field
        if sub is None and field.is_repeated and field.message_type is not None:
            shape = "a map: name an entry by its key" if is_map(field) else "a list of sections: name an element"
            raise override.error(f"{here} is {shape} ({here}[{'KEY' if is_map(field) else 0}]...)")
        if value_field.message_type is None and not last:
            raise override.error(f"{here} is a single value, not a section")
        if value_field.message_type is not None and last:
            example = value_field.message_type.fields[0].name
            raise override.error(f"{here} is a section: set its fields one by one ({here}.{example}=...)")
        if value_field.message_type is not None:
            msg, where = _section(msg, field, sub, here, override), here
            continue
        _set_value(msg, field, sub, here, override, origins)
        return


def _section(msg, field, sub, here: str, override):
    """The message an override path goes into, adding a repeated element when asked to."""
    if not field.is_repeated:
        return getattr(msg, field.name)
    container = getattr(msg, field.name)
    if is_map(field):
        return container[_key(field, sub, override)]
    index = int(sub)
    if index < len(container):
        return container[index]
    _check_append(index, len(container), here, override)
    return container.add()


def _key(field, sub: str, override):
    try:
        return _map_key(field, sub)
    except ValueError:
        raise override.error(f'{field.name} is keyed by integers, got "{sub}"') from None


def _check_append(index: int, size: int, here: str, override) -> None:
    if index == size and override.mode != "set":
        return
    listed = here[:here.rindex("[")]
    hint = f"; +{override.key}=... adds one" if index == size else ""
    raise override.error(f"{listed} has {size} element{'s' * (size != 1)}, no [{index}]{hint}")


def _set_value(msg, field, sub, here: str, override, origins: dict[str, str]) -> None:
    origin = f'override "{override.text}"'
    node = _compose_value(override)
    container = getattr(msg, field.name) if field.is_repeated else None
    if is_map(field):
        key = _key(field, sub, override)
        if override.mode == "add" and key in container:
            _already_set(here, origins, override)
        value = _scalar(field.message_type.fields_by_name["value"], node, override)
        _checked(field, lambda: container.__setitem__(key, value), override)
        origins[here] = origin
        return
    if field.is_repeated and sub is None:
        if not isinstance(node, yaml.SequenceNode):
            raise override.error(f"{field.name} expects a list ({override.key}=[a,b]), got {_got(node)}")
        if override.mode == "add" and len(container):
            _already_set(here, origins, override)
        values = [_scalar(field, item, override) for item in node.value]
        del container[:]
        _checked(field, lambda: container.extend(values), override)
        for stale in [p for p in origins if p.startswith(here + "[")]:
            del origins[stale]
        origins.update({f"{here}[{k}]": origin for k in range(len(values))})
        return
    value = _scalar(field, node, override)
    if field.is_repeated:
        index = int(sub)
        if index < len(container):
            if override.mode == "add":
                _already_set(here, origins, override)
            _checked(field, lambda: container.__setitem__(index, value), override)
        else:
            _check_append(index, len(container), here, override)
            _checked(field, lambda: container.append(value), override)
    else:
        if override.mode == "add" and (here in origins or is_set(msg, field.name)):
            _already_set(here, origins, override)
        _checked(field, lambda: setattr(msg, field.name, value), override)
    origins[here] = origin


def _already_set(here: str, origins: dict[str, str], override) -> None:
    where = origins.get(here)
    given = f" ({where})" if where else ""
    raise override.error(f"{here} is already set{given}; use {override.key}=... to change it")


def _checked(field, assign, override) -> None:
    """Run ``assign``; protobuf's range error for an integer too large becomes a spec error."""
    try:
        assign()
    except ValueError:
        raise override.error(f"{field.name} expects {type_words(field)}, got \"{override.value}\" "
                             f"(out of range)") from None


def _compose_value(override):
    if override.value == "":
        return yaml.ScalarNode("tag:yaml.org,2002:str", "", style="'")  # Hydra: key= is an empty string
    try:
        node = yaml.compose(override.value, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        raise override.error(f"value is not valid YAML ({exc.problem or exc.context})") from None
    return node if node is not None else yaml.ScalarNode("tag:yaml.org,2002:null", "")


def _got(node) -> str:
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if isinstance(node, yaml.MappingNode):
        return "a section of key: value pairs"
    return f'"{node.value}"'


def _scalar(field, node, override):
    """One override value (a YAML node) as a value of ``field``."""
    words = type_words(field)
    if field.cpp_type in _INTEGER_TYPES or field.GetOptions().Extensions[taoctl_options_pb2.legacy_float]:
        words = _TYPE_WORDS[FD.TYPE_UINT32 if field.cpp_type in (FD.CPPTYPE_UINT32, FD.CPPTYPE_UINT64)
                            else FD.TYPE_INT32]
    problem = f"{field.name} expects {words}, got {_got(node)}"
    if not isinstance(node, yaml.ScalarNode):
        raise override.error(problem)
    tag, text = node.tag.rsplit(":", 1)[-1], node.value
    if field.type == FD.TYPE_ENUM:
        value = field.enum_type.values_by_name.get(text)
        if value is None:
            raise override.error(problem + did_you_mean(text, field.enum_type.values_by_name))
        return value.number
    if field.cpp_type == FD.CPPTYPE_STRING:
        if tag == "null":
            raise override.error(problem)
        return text.encode() if field.type == FD.TYPE_BYTES else text
    if field.cpp_type == FD.CPPTYPE_BOOL:
        if tag != "bool":
            raise override.error(problem)
        return _CONSTRUCTOR.construct_object(node)
    if tag == "int":
        number = _CONSTRUCTOR.construct_object(node)
    elif tag == "float" or _EXPONENT_FLOAT.match(text) or text.lower() in _NON_FINITE:
        number = float(text) if tag != "float" else _CONSTRUCTOR.construct_object(node)
    else:
        raise override.error(problem)
    whole = isinstance(number, int) or number.is_integer()
    if field.cpp_type in _INTEGER_TYPES or field.GetOptions().Extensions[taoctl_options_pb2.legacy_float]:
        unsigned = field.cpp_type in (FD.CPPTYPE_UINT32, FD.CPPTYPE_UINT64)
        if not whole or (unsigned and number < 0):
            raise override.error(problem)
        return int(number) if field.cpp_type in _INTEGER_TYPES else float(number)
    return float(number)
