"""Spec files: TAO's protobuf-text experiment specs and TAO 5's YAML specs (torch-free).

A task declares each kind of spec file it reads as a ``SpecKind`` in its own
``tasks/<pkg>/spec.py`` (see ARCHITECTURE.md, "Specs"); this package loads a file as a kind,
with every user error as one ``FILE:LINE:COL: message`` line (``SpecError``) and legacy TAO
fields accepted with a warning. Hydra-style overrides from the command line
(``train_config.n_epochs=3``, ``+a.b=v``, ``list=[1,2]``) are applied before the required and
range checks, and their errors name the override (``override "a.b=v": ...``). A kind's
``validate`` function then checks what the values mean together (an arch registered, its
n_layers allowed): loading runs it, so ``taoctl spec check``, ``--dry-run`` and the subtask
itself refuse the same specs with the same line.
"""

from __future__ import annotations

import dataclasses
import difflib
import glob
import math
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

from taoctl.engine.hub import is_hub_name
from taoctl.engine.spec import prototxt, yamlspec
from taoctl.errors import SpecError

__all__ = ["SpecKind", "SpecError", "FieldError", "Range", "Override", "positive", "non_negative", "fraction",
           "at_least", "parse_overrides", "load", "missing_paths", "path_values", "detect_kind", "check_file",
           "is_yaml", "field_value", "check_arch"]

YAML_SUFFIXES = (".yaml", ".yml")


@dataclasses.dataclass(frozen=True)
class Range:
    """Allowed values of a numeric field; NaN and infinity are never allowed."""

    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    exclusive_maximum: bool = False

    def allows(self, value) -> bool:
        if not math.isfinite(value):
            return False
        if self.minimum is not None and (value <= self.minimum if self.exclusive_minimum else value < self.minimum):
            return False
        return self.maximum is None or (value < self.maximum if self.exclusive_maximum else value <= self.maximum)

    def words(self) -> str:
        low, high = self.minimum, self.maximum
        if low is not None and high is not None:
            return f"in {'(' if self.exclusive_minimum else '['}{low:g}, {high:g}{')' if self.exclusive_maximum else ']'}"
        if low is not None:
            return f"{'>' if self.exclusive_minimum else '>='} {low:g}"
        return f"{'<' if self.exclusive_maximum else '<='} {high:g}"


positive = Range(minimum=0, exclusive_minimum=True)
non_negative = Range(minimum=0)
fraction = Range(minimum=0, maximum=1)


def at_least(n: float) -> Range:
    return Range(minimum=n)


class FieldError(SpecError):
    """What a kind's ``validate`` raises about one field: ``field`` is its concrete dotted path
    (``model_config.n_layers``), ``message`` one line naming it. Loading prefixes the place the
    field was set (``spec.txt:6:3:``, ``override "a.b=v":``), as it does for range errors."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field, self.message = field, message


@dataclasses.dataclass(frozen=True)
class SpecKind:
    """One kind of spec file a task reads.

    ``message`` (a generated protobuf class) for protobuf-text specs, or ``schema`` (a
    dataclass) for YAML specs. ``required``: dotted paths that must be set in every file of
    this kind; ``required_for``: extra paths per subtask (``{"evaluate": ("eval_config.model_path",)}``).
    ``paths``: fields that name files or folders, for ``--dry-run``. ``ranges``: numeric fields
    and the values they allow (``{"train_config.n_epochs": at_least(1)}``), checked on every
    element of a repeated field, for the values the file or an override sets. ``corpus``: fnmatch
    patterns on ``owner/repo/path`` of the TAO spec corpus whose files must load as this kind.
    ``folders``: those of ``paths`` that name a folder (``--dry-run`` refuses a file there).
    ``validate``: ``validate(spec)``, run by every load after the required and range checks,
    raises ``FieldError`` for a value the task cannot use (an unknown arch, an n_layers that
    arch lacks); it checks values only, never the filesystem (``spec check`` runs anywhere).
    Every declared path must name a field of the message or schema (checked here, so a typo
    fails at import instead of silently checking nothing).
    """

    name: str
    message: type | None = None
    schema: type | None = None
    required: tuple[str, ...] = ()
    required_for: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    paths: tuple[str, ...] = ()
    ranges: dict[str, Range] = dataclasses.field(default_factory=dict)
    corpus: tuple[str, ...] = ()
    folders: tuple[str, ...] = ()
    validate: Callable[[object], None] | None = None

    def __post_init__(self):
        if (self.message is None) == (self.schema is None):
            raise ValueError(f"spec kind {self.name!r} needs exactly one of message= or schema=")
        stray = [p for p in self.folders if p not in self.paths]
        if stray:
            raise ValueError(f"spec kind {self.name!r}: folders {stray} are not among its paths")
        declared = [*self.required, *(p for paths in self.required_for.values() for p in paths), *self.paths]
        for path in [*declared, *self.ranges]:
            try:
                numeric = (yamlspec.is_numeric(self.schema, path) if self.is_yaml
                           else prototxt.is_numeric(self.message, path))
            except KeyError as exc:
                raise ValueError(f"spec kind {self.name!r}: {exc.args[0]}") from None
            if path in self.ranges and not numeric:
                raise ValueError(f"spec kind {self.name!r}: range on {path}, which is not a number")

    @property
    def is_yaml(self) -> bool:
        return self.schema is not None

    @property
    def top_level_names(self) -> set[str]:
        if self.message is not None:
            return set(self.message.DESCRIPTOR.fields_by_name)
        return {f.name for f in dataclasses.fields(self.schema)}


# -- command-line overrides ------------------------------------------------------------------

_OVERRIDE_KEY = re.compile(r"^[A-Za-z_][\w-]*(?:\.[\w-]+|\[[^\[\]]+\])*$")
_KEY_PART = re.compile(r"\[([^\[\]]+)\]|([^.\[\]]+)")
_MODES = {"": "set", "+": "add", "++": "force"}


@dataclasses.dataclass(frozen=True)
class Override:
    """One ``key=value`` override as typed (``text``). ``mode``: "set" (``a.b=v``: any field the
    schema has), "add" (``+a.b=v``: only a field the file does not set; an index one past the end
    of a list appends an element), "force" (``++a.b=v``: either). ``parts``: the key split at dots
    and brackets (``a.b[0].c`` and ``a.b.0.c`` alike); ``value``: the text after ``=``, read as
    YAML (``3``, ``1e-4``, ``true``, ``[a,b]``, ``/path``)."""

    text: str
    mode: str
    key: str
    parts: tuple[str, ...]
    value: str

    def error(self, message: str) -> SpecError:
        return SpecError(f'override "{self.text}": {message}')


def parse_override(text: str) -> Override:
    """One override string as an Override; a one-line SpecError when it is not ``key=value``."""
    if text.startswith("~"):
        raise SpecError(f'override "{text}": removing a key (~key) is not supported; set it instead (key=value)')
    plus = len(text) - len(text.lstrip("+"))
    key, sep, value = text[plus:].partition("=")
    if not sep or plus > 2:
        raise SpecError(f'override "{text}": expected key=value (e.g. train_config.n_epochs=10)')
    if not _OVERRIDE_KEY.match(key):
        raise SpecError(f'override "{text}": "{key}" is not a key (names joined by dots, e.g. train_config.n_epochs)')
    parts = tuple(index or name for index, name in _KEY_PART.findall(key))
    return Override(text, _MODES[text[:plus]], key, parts, value)


def parse_overrides(args) -> tuple[str, ...]:
    """A command's trailing arguments as override strings; SpecError on the first that is not
    ``key=value``, ``+key=value`` or ``++key=value``."""
    for arg in args:
        parse_override(arg)
    return tuple(args)


def is_yaml(path) -> bool:
    return str(path).lower().endswith(YAML_SUFFIXES)


def _warn_to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


MAX_SPEC_BYTES = 16 * 2**20


def read_text(path) -> str:
    """The spec file's text, or a one-line SpecError naming the file."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            # Bounded: a device or a huge file given as a spec (-e /dev/zero) must not fill memory.
            data = handle.read(MAX_SPEC_BYTES + 1)
    except FileNotFoundError:
        raise SpecError(f"{path}: spec file not found") from None
    except IsADirectoryError:
        raise SpecError(f"{path}: is a folder, not a spec file") from None
    except PermissionError:
        raise SpecError(f"{path}: spec file not readable (permission denied)") from None
    if len(data) > MAX_SPEC_BYTES:
        raise SpecError(f"{path}: larger than {MAX_SPEC_BYTES // 2**20} MiB, not a spec file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SpecError(f"{path}: not a text file (byte {exc.start} is not UTF-8)") from None


def load(path, kind: SpecKind, on_warning: Callable[[str], None] | None = None, subtask: str | None = None,
         overrides=()):
    """Load a spec file as ``kind``: a filled protobuf message, or a schema dataclass instance.

    ``overrides`` (strings such as ``train_config.n_epochs=3``, see ``Override``) are applied in
    order after the file is read, before the required-value and range checks. Errors raise
    SpecError (``FILE:LINE:COL: message``, ``override "a.b=v": message``, or ``FILE: missing
    required value a.b``); each legacy field set in the file calls ``on_warning`` (default:
    print to stderr) and is cleared.
    """
    warn = on_warning or _warn_to_stderr
    filename = str(path)
    text = read_text(path)
    parsed = [parse_override(o) for o in overrides]
    required = kind.required + kind.required_for.get(subtask, ())
    if kind.is_yaml:
        spec, origins = yamlspec.load(text, kind.schema, filename, required, parsed)
        values = yamlspec.resolve
    else:
        spec = kind.message()
        sites = prototxt.apply_legacy(prototxt.parse(text, spec, filename), filename, warn)
        origins = {site.path: f"{filename}:{site.line}:{site.column}" for site in sites}
        for override in parsed:
            prototxt.apply_override(spec, override, origins)
        values = prototxt.values_at
    _check_ranges(spec, kind, values, origins)
    if not kind.is_yaml:
        # After the ranges: a required value written as 0 is out of range, not "missing" (proto3
        # cannot tell an explicit 0 from an unset field; the file's position can).
        missing = prototxt.missing_required(spec, required)
        if missing:
            noun = "value" if len(missing) == 1 else "values"
            raise SpecError(f"{filename}: missing required {noun} {', '.join(missing)}")
    _validate(spec, kind, origins, filename)
    return spec


def _validate(spec, kind: SpecKind, origins: dict, filename: str) -> None:
    if kind.validate is None:
        return
    try:
        kind.validate(spec)
    except FieldError as exc:
        raise SpecError(f"{_origin_of(exc.field, origins, filename)}: {exc.message}") from None


def _origin_of(field: str, origins: dict, filename: str) -> str:
    """Where ``field`` was set; for a section or a map, where its first value was; else the file."""
    if field in origins:
        return origins[field]
    inside = [origin for path, origin in origins.items() if path.startswith((field + ".", field + "["))]
    return inside[0] if inside else filename


def field_value(spec, path: str):
    """The value a dotted path (no repeated field on the way) holds when the spec sets it, else None."""
    found = _values(spec, path)
    return found[0][1] if found else None


def check_arch(spec, arch_field: str, n_layers_field: str | None = None) -> None:
    """For a kind's ``validate``: FieldError unless the spec's arch (with its n_layers) names a
    registered backbone (``taoctl.engine.backbones.ARCHS``); an unset arch is ``required``'s."""
    from taoctl.engine.backbones import ArchError, resolve_arch

    arch = field_value(spec, arch_field)
    n_layers = field_value(spec, n_layers_field) if n_layers_field else None
    if not arch:
        return
    try:
        resolve_arch(arch, n_layers)
    except ArchError as exc:
        field = n_layers_field if exc.field == "n_layers" and n_layers else arch_field
        raise FieldError(field, f"{field}: {exc}") from None


def _check_ranges(spec, kind: SpecKind, values, origins: dict) -> None:
    for field_path, allowed in kind.ranges.items():
        for concrete, value in values(spec, field_path):
            origin = origins.get(concrete)
            if origin is not None and value is not None and not allowed.allows(value):
                finite = "" if math.isfinite(value) else "a finite number "
                raise SpecError(f"{origin}: {concrete} must be {finite}{allowed.words()}, got {value:.7g}")


def _values(spec, path: str) -> list[tuple[str, object]]:
    if dataclasses.is_dataclass(spec):
        return yamlspec.resolve(spec, path)
    return prototxt.resolve(spec, path)


def missing_paths(spec, kind: SpecKind, fields=None) -> list[str]:
    """For ``--dry-run``: one line per path field whose file or folder does not exist.

    A field of ``kind.folders`` naming a file is one too. ``fields`` defaults to ``kind.paths``;
    unset fields and model hub names (``torchvision:...``) are skipped (``required`` covers
    the former, loading resolves the latter).
    TAO's paths may hold a glob (``tfrecords_path: "/data/tfrecords/*"``): it counts as
    existing when anything matches.
    """
    problems = []
    for field_path in kind.paths if fields is None else fields:
        for concrete, value in path_values(spec, kind, (field_path,)):
            if any(ch in value for ch in "*?["):
                if not glob.glob(value):
                    problems.append(f"{concrete}: nothing matches {value}")
            elif not os.path.exists(value):
                problems.append(f"{concrete}: {value} does not exist")
            elif field_path in kind.folders and not os.path.isdir(value):
                problems.append(f"{concrete}: {value} is a file, not a folder")
    return problems


def path_values(spec, kind: SpecKind, fields=None) -> list[tuple[str, str]]:
    """``(field, path)`` for every path field the spec sets (``fields`` defaults to ``kind.paths``).

    A repeated field gives one pair per element (``data_sources[1].image_directory_path``);
    unset fields and model hub names (``torchvision:...``) are left out.
    """
    return [(concrete, value) for field_path in (kind.paths if fields is None else fields)
            for concrete, value in _values(spec, field_path)
            if isinstance(value, str) and value and not is_hub_name(value)]


def detect_kind(path, kinds) -> SpecKind | None:
    """The kind whose top-level fields best match the file's; None when none shares any.

    Only kinds of the file's format (YAML by suffix, else protobuf text) compete. A file that
    cannot be read or tokenized gets the first kind of its format, so loading it reports the
    real error.
    """
    kinds = list(kinds.values()) if isinstance(kinds, dict) else list(kinds)
    same_format = [k for k in kinds if k.is_yaml == is_yaml(path)]
    if not same_format:
        return None
    try:
        text = read_text(path)
    except SpecError:
        return same_format[0]
    names = yamlspec.top_level_names(text) if is_yaml(path) else prototxt.top_level_names(text)
    if names is None:
        return same_format[0]
    if not names:  # an empty file: every field unset; loading says what is missing
        return same_format[0]
    scored = [(len(set(names) & k.top_level_names), -i, k) for i, k in enumerate(same_format)]
    best = max(scored, key=lambda s: (s[0], s[1]))
    if best[0] > 0:
        return best[2]
    # No exact match: a misspelt top-level field ("modl_config") should still get its
    # did-you-mean from loading, so take the kind with close names, if any.
    fuzzy = [(sum(bool(difflib.get_close_matches(n, k.top_level_names, 1, 0.75)) for n in names), -i, k)
             for i, k in enumerate(same_format)]
    best = max(fuzzy, key=lambda s: (s[0], s[1]))
    return best[2] if best[0] > 0 else None


def check_file(path, kinds, on_warning: Callable[[str], None] | None = None, subtask: str | None = None):
    """Load a file as whichever of ``kinds`` it is; returns (kind, spec). Raises SpecError."""
    kinds_list = list(kinds.values()) if isinstance(kinds, dict) else list(kinds)
    read_text(path)  # a missing file is reported as such, not as "matches no kind"
    kind = detect_kind(path, kinds_list)
    if kind is None:
        same_format = [k for k in kinds_list if k.is_yaml == is_yaml(path)]
        fmt = "YAML" if is_yaml(path) else "protobuf text"
        if not same_format:
            raise SpecError(f"{path}: this task reads no {fmt} spec files (its kinds: "
                            f"{', '.join(k.name for k in kinds_list)})")
        expected = "; ".join(f"{k.name}: {', '.join(sorted(k.top_level_names))}" for k in same_format)
        text = read_text(path)
        found = yamlspec.top_level_names(text) if is_yaml(path) else prototxt.top_level_names(text)
        raise SpecError(f"{path}: its top-level fields ({', '.join(dict.fromkeys(found or []))}) match none of "
                        f"the {fmt} spec kinds taoctl reads for this task ({expected})")
    return kind, load(path, kind, on_warning, subtask)
