"""Protobuf text-format specs: parse into a message, errors as one ``FILE:LINE:COL: message`` line.

google.protobuf's text parser knows the position of every token but neither reports where each
field was set nor words its errors for a TAO user ('Message type "makenet.ModelConfig" has no
field named "n_layrs"'). ``_Parser`` extends it (the private ``text_format._Parser`` hooks,
stable since protobuf 3) to record the path and position of every field it fills, to check
unknown fields, duplicates and value types itself with messages that name the spec's own
fields, and to remember what is left for the legacy-field pass.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable

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


@dataclasses.dataclass
class FieldSite:
    """Where one field of the spec was set: its dotted path, descriptor, position and owner."""

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
        self.sites.append(FieldSite(self._path(field), field, line, column, message, ""))
        self.stack.append(part)
        self.opened.append(line)
        self.seen.append({})
        super()._MergeMessageField(tokenizer, message, field)
        self.seen.pop()
        self.opened.pop()
        self.stack.pop()

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
        self.sites.append(FieldSite(self._path(field), field, line, column, message, token))


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


def apply_legacy(sites: Iterable[FieldSite], filename: str, warn: Callable[[str], None]) -> None:
    """Warn about and clear every legacy value: fields marked ``[deprecated = true]`` and
    non-whole values of ``[(taoctl.legacy_float) = true]`` fields."""
    for site in sites:
        options = site.field.GetOptions()
        owner_name = site.owner.DESCRIPTOR.name
        if options.deprecated:
            warn(f'{filename}:{site.line}:{site.column}: warning: legacy field "{site.field.name}" in '
                 f"{owner_name} ignored (older TAO releases accepted it; current TAO does not use it)")
            site.owner.ClearField(site.field.name)
        elif options.Extensions[taoctl_options_pb2.legacy_float] and not _INTEGER_LITERAL.match(site.token):
            value = getattr(site.owner, site.field.name)
            if float(value).is_integer():
                continue
            warn(f"{filename}:{site.line}:{site.column}: warning: legacy value {site.token} of "
                 f'"{site.field.name}" in {owner_name} ignored (older TAO releases took a float; '
                 f"current TAO takes a whole number), the default is used")
            site.owner.ClearField(site.field.name)


def is_set(message, field_name: str) -> bool:
    field = message.DESCRIPTOR.fields_by_name[field_name]
    if field.is_repeated:
        return len(getattr(message, field_name)) > 0
    if field.has_presence:
        return message.HasField(field_name)
    # proto3 scalars without presence: TAO treats the zero value as "not given" too.
    return getattr(message, field_name) != field.default_value


def resolve(message, path: str) -> list[tuple[str, object]]:
    """Values at a dotted path (``a.b.c``), one per element of any repeated field on the way,
    each with its concrete path (``a[0].b.c``); unset parts yield nothing."""
    found: list[tuple[str, object]] = []

    def walk(msg, parts: list[str], prefix: str):
        name, rest = parts[0], parts[1:]
        field = msg.DESCRIPTOR.fields_by_name.get(name)
        if field is None:
            raise KeyError(f"{msg.DESCRIPTOR.name} has no field {name!r} (path {path!r})")
        here = f"{prefix}.{name}" if prefix else name
        if not is_set(msg, name):
            return
        value = getattr(msg, name)
        items = list(enumerate(value)) if field.is_repeated else [(None, value)]
        for index, item in items:
            item_path = here if index is None else f"{here}[{index}]"
            if rest:
                walk(item, rest, item_path)
            else:
                found.append((item_path, item))

    walk(message, path.split("."), "")
    return found


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
