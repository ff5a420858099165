"""Configs as data on the command line: ``--config FILE`` plus ``key=value`` overrides, and a
``--field-name VALUE`` option for every field of the command's pydantic model.

A command names its model; the options are generated from the model's fields (types,
defaults, choices, bounds and descriptions in ``--help``) only when that command runs or shows
its help, so ``asft --help`` never imports torch. Values go to pydantic as given (strings for
scalars, lists split at commas or parsed as YAML/JSON); the model validates them, and its
first complaint becomes one line naming the key as the user spelled it. Precedence: the file,
then explicit options, then generated options, then ``key=value`` in the order given.
"""

from __future__ import annotations

import importlib

import difflib
import inspect
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Optional

import typer
import typer.main
from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticUndefined
from typer.core import TyperCommand, TyperGroup
from typer._click import exceptions as click_errors

from asft.errors import AsftError

_META = "asft.config_args"
_NULL = ("null", "None", "~")


@dataclass(frozen=True)
class Spec:
    """What a command takes: its model (imported lazily), legacy option names of fields
    (``{"judge.kind": ["--judge"]}``, first name is the one errors show), fields without an
    option, and the fields listed with the command's own options in ``--help``."""

    schema: str | Callable[[], type[BaseModel]]  # "module:Class", imported when first needed
    aliases: dict[str, list[str]] = field(default_factory=dict)
    skip: tuple[str, ...] = ()
    essentials: tuple[str, ...] = ()
    overrides: bool = True  # a KEY=VALUE... argument (groups read them after their options instead)

    def model(self) -> type[BaseModel]:
        if callable(self.schema):
            return self.schema()
        module, _, name = self.schema.partition(":")
        return getattr(importlib.import_module(module), name)


@dataclass
class Given:
    """What the command line set: ``key -> (spelling, value)`` in the order applied."""

    config: str | None
    options: dict[str, tuple[str, Any]]
    overrides: list[str]


# ---------------------------------------------------------------- the model's fields

def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """(annotation without Optional/Annotated, whether None is allowed)."""
    nullable = False
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            nullable = nullable or len(args) < len(typing.get_args(annotation))
            if len(args) != 1:
                return annotation, nullable
            annotation = args[0]
        else:
            return annotation, nullable


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _key_of(name: str, info) -> str:
    return info.alias or name


@dataclass(frozen=True)
class Field_:
    key: str  # dotted, as in a config file
    annotation: Any
    nullable: bool
    info: Any
    default: Any  # what applies when unset (PydanticUndefined: required)


def fields_of(schema: type[BaseModel], prefix: str = "", defaults: BaseModel | None = None) -> list[Field_]:
    """Every leaf field, nested models flattened to dotted keys (``judge.kind``)."""
    leaves = []
    for name, info in schema.model_fields.items():
        key = prefix + _key_of(name, info)
        annotation, nullable = _unwrap(info.annotation)
        default = getattr(defaults, name) if defaults is not None else (
            info.default_factory() if info.default_factory else info.default)
        if _is_model(annotation) and not nullable:
            leaves += fields_of(annotation, key + ".", default if isinstance(default, BaseModel) else None)
        else:
            leaves.append(Field_(key, annotation, nullable, info, default))
    return leaves


def _model_at(schema: type[BaseModel], parts: list[str]) -> tuple[type[BaseModel] | None, str | None]:
    """(the model holding the last part, the field's name there) or (None, None) if a part is
    not a field; parts inside a dict field are free."""
    model: Any = schema
    for i, part in enumerate(parts):
        names = {_key_of(n, f): n for n, f in model.model_fields.items()}
        if part not in names:
            return model, None
        if i == len(parts) - 1:
            return model, names[part]
        annotation, _ = _unwrap(model.model_fields[names[part]].annotation)
        if typing.get_origin(annotation) is dict:
            return None, part
        if not _is_model(annotation):
            return model, None
        model = annotation
    return model, None


def _closest(schema: type[BaseModel], key: str) -> str:
    """`` (did you mean X?)`` for the nearest sibling key, else the nearest leaf anywhere."""
    parts = key.split(".")
    parent, _ = _model_at(schema, parts[:-1]) if len(parts) > 1 else (schema, None)
    siblings = [_key_of(n, f) for n, f in parent.model_fields.items()] if _is_model(parent) else []
    prefix = ".".join(parts[:-1]) + "." if len(parts) > 1 else ""
    match = [prefix + m for m in difflib.get_close_matches(parts[-1], siblings, n=1, cutoff=0.6)]
    if not match:
        leaves = {f.key.split(".")[-1]: f.key for f in fields_of(schema)}
        match = [leaves[m] for m in difflib.get_close_matches(parts[-1], list(leaves), n=1, cutoff=0.75)]
    return f" (did you mean {match[0]}?)" if match else ""


def _choices(annotation: Any) -> list[str]:
    if typing.get_origin(annotation) is Literal:
        return [str(a) for a in typing.get_args(annotation)]
    return []


def _is_collection(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (list, tuple, set, dict) or _is_model(annotation)


def _metavar(f: Field_) -> str:
    if choices := _choices(f.annotation):
        return "[" + "|".join(choices) + "]"
    origin = typing.get_origin(f.annotation)
    if origin in (list, tuple, set):
        return "A,B,..."
    if origin is dict or _is_model(f.annotation):
        return "YAML"
    return {int: "INTEGER", float: "FLOAT", str: "TEXT"}.get(f.annotation, "VALUE")


def _bounds(info) -> str:
    signs = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<", "min_length": "min length", "max_length": "max length"}
    parts = [f"{sign} {getattr(m, attr)}" for m in info.metadata for attr, sign in signs.items()
             if getattr(m, attr, None) is not None]
    return ", ".join(parts)


def _help(f: Field_) -> str:
    text = (f.info.description or "").rstrip(".")
    extra = [b] if (b := _bounds(f.info)) else []
    if f.default is PydanticUndefined:
        extra.append("required unless in --config")
    elif f.default is not None and f.annotation is not bool:
        shown = ",".join(map(str, f.default)) if isinstance(f.default, (list, tuple)) else f.default
        extra.append(f"default: {shown}")
    where = f"{f.key}=false" if f.annotation is bool and f.default is True else f.key
    return f"{text} ({where}; {'; '.join(extra)})" if extra else f"{text} ({where})"


def _param_name(key: str) -> str:
    return "cfg__" + key.replace(".", "__").replace("-", "_")


def _generated_params(spec: Spec, taken: set[str]) -> tuple[list, dict[str, tuple[str, Field_]]]:
    """Typer's own option objects for the fields (made by typer from a generated signature),
    and ``param name -> (spelling, field)``."""
    schema = spec.model()
    signature, by_param = [], {}
    config = typer.Option(None, "--config", metavar="FILE",
                          help=f"YAML/JSON file of {schema.__name__} fields; options and KEY=VALUE override it")
    signature.append(inspect.Parameter("cfg_file", inspect.Parameter.KEYWORD_ONLY, default=config,
                                       annotation=Optional[str]))
    for f in fields_of(schema):
        if f.key in spec.skip:
            continue
        names = [n for n in dict.fromkeys([*spec.aliases.get(f.key, []), "--" + f.key.replace(".", "-").replace("_", "-")])
                 if n not in taken]
        if not names:
            continue
        if f.annotation is bool:  # a flag sets the value that is not the default: --resume, --no-progress
            flips = f.default is True
            names = [n for n in dict.fromkeys(["--no-" + n[2:] if flips else n for n in names]) if n not in taken]
            if not names:
                continue
            decls, annotation = names, Optional[bool]
        else:
            decls, annotation = names, Optional[list[str]] if typing.get_origin(f.annotation) in (list, tuple, set) else Optional[str]
        option = typer.Option(None, *decls, help=_help(f), show_default=False,
                              metavar=None if f.annotation is bool else _metavar(f),
                              rich_help_panel=None if f.key in spec.essentials else f"{schema.__name__} fields")
        signature.append(inspect.Parameter(_param_name(f.key), inspect.Parameter.KEYWORD_ONLY, default=option,
                                           annotation=annotation))
        by_param[_param_name(f.key)] = (names[0], f)
    if spec.overrides:
        argument = typer.Argument(None, metavar="KEY=VALUE", show_default=False,
                                  help="Overrides of any field, nested keys dotted (judge.kind=guard), lists comma-separated "
                                       "or as YAML/JSON (target_modules=q_proj,v_proj)")
        signature.append(inspect.Parameter("cfg_overrides", inspect.Parameter.KEYWORD_ONLY, default=argument,
                                           annotation=Optional[list[str]]))

    def placeholder(**_: Any) -> None: ...

    placeholder.__signature__ = inspect.Signature(signature)  # type: ignore[attr-defined]
    maker = typer.Typer(add_completion=False)
    maker.command()(placeholder)
    return typer.main.get_command(maker).params, by_param


class _ConfigMixin:
    """get_params adds the generated options (lazily); invoke hands their values to ``build``."""

    spec: Spec

    def _generated(self, ctx):
        if "_asft_generated" not in self.__dict__:
            taken = {opt for p in self.params for opt in [*p.opts, *p.secondary_opts]} | {"--help"}
            self.__dict__["_asft_generated"] = _generated_params(self.spec, taken)
        return self.__dict__["_asft_generated"]

    def get_params(self, ctx):
        params = super().get_params(ctx)
        head, tail = (params[:-1], params[-1:]) if params and params[-1].name == "help" else (params, [])
        return [*head, *self._generated(ctx)[0], *tail]

    def invoke(self, ctx):
        _, by_param = self._generated(ctx)
        given = Given(config=ctx.params.pop("cfg_file", None), options={},
                      overrides=list(ctx.params.pop("cfg_overrides", None) or ()) + ctx.meta.pop(_META + ".rest", []))
        for name, (spelling, f) in by_param.items():
            value = ctx.params.pop(name, None)
            if value is not None and value != [] and value != ():
                given.options[f.key] = (spelling, not value if f.annotation is bool and f.default is True else value)
        ctx.meta[_META] = given
        return super().invoke(ctx)


class ConfigCommand(_ConfigMixin, TyperCommand):
    pass


class ConfigGroup(_ConfigMixin, TyperGroup):
    """A group whose own callback takes the config: KEY=VALUE after its options, where a
    sub-command name would be (``asft screen --data D --out O combine=all``)."""

    def parse_args(self, ctx, args):
        rest = super().parse_args(ctx, args)
        if ctx._protected_args and "=" in ctx._protected_args[0]:
            ctx.meta[_META + ".rest"] = [*ctx._protected_args, *ctx.args]
            ctx._protected_args, ctx.args = [], []
        return rest


def command(parent: typer.Typer, name: str, spec: Spec, **kwargs):
    """``@command(app, "train", Spec(lambda: TrainConfig))``: a typer command with the config options."""
    cls = type(f"{name.title()}ConfigCommand", (ConfigCommand,), {"spec": spec})
    return parent.command(name, cls=cls, **kwargs)


def group(spec: Spec, **kwargs) -> typer.Typer:
    """A typer group whose callback takes the config (see :class:`ConfigGroup`)."""
    cls = type("ConfigGroupCommand", (ConfigGroup,), {"spec": Spec(**{**spec.__dict__, "overrides": False})})
    return typer.Typer(cls=cls, rich_markup_mode=None, **kwargs)


def given(ctx: typer.Context) -> Given:
    return ctx.meta[_META]


# ---------------------------------------------------------------- values and validation

def _coerce(schema: type[BaseModel], key: str, raw: Any, spelling: str) -> Any:
    """A command-line value for pydantic: scalars as given, lists split at commas (or YAML)."""
    model, name = _model_at(schema, key.split("."))
    if model is None or name is None:
        return raw
    annotation, nullable = _unwrap(model.model_fields[name].annotation)
    values = raw if isinstance(raw, (list, tuple)) else [raw]
    if not all(isinstance(v, str) for v in values):
        return raw
    if nullable and len(values) == 1 and values[0] in _NULL:
        return None
    if not _is_collection(annotation):
        return values[-1] if isinstance(raw, (list, tuple)) else raw
    parsed: list = []
    for value in values:
        if value.strip()[:1] in "[{" or typing.get_origin(annotation) is dict or _is_model(annotation):
            import yaml

            try:
                loaded = yaml.safe_load(value)
            except yaml.YAMLError as exc:
                raise AsftError(f"{spelling} {value!r}: not a YAML/JSON value ({str(exc).splitlines()[0]})") from None
            if not isinstance(loaded, list):
                return loaded
            parsed += loaded
        else:
            parsed += [part.strip() for part in value.split(",") if part.strip()]
    return parsed


def _field(model: Any, part: str):
    if not _is_model(model):
        return None
    return next((f for n, f in model.model_fields.items() if _key_of(n, f) == part), None)


def _set(data: dict, schema: type[BaseModel], key: str, value: Any, spelling: str) -> None:
    """``data[a][b] = value`` for key ``a.b``; a section the data lacks starts from the
    fields its default instance set explicitly (so presets and defaults keep applying)."""
    parts = key.split(".")
    if _model_at(schema, parts)[1] is None:
        raise AsftError(f"{spelling}: unknown key{_closest(schema, key)}; see --help for the keys")
    node, model = data, schema
    for part in parts[:-1]:
        info = _field(model, part)
        if not isinstance(node.get(part), dict):
            default = (info.default_factory() if info.default_factory else info.default) if info else None
            node[part] = default.model_dump(exclude_unset=True, by_alias=True) if isinstance(default, BaseModel) else {}
        model = _unwrap(info.annotation)[0] if info else None
        node = node[part]
    node[parts[-1]] = value


def _load_file(uri: str) -> dict:
    import yaml

    from asft.storage import read_text

    try:
        data = yaml.safe_load(read_text(uri)) or {}
    except yaml.YAMLError as exc:
        raise AsftError(f"{uri}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise AsftError(f"{uri}: expected a mapping of fields (key: value), got a {type(data).__name__}")
    return data


def _file_keys(data: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in data.items():
        keys.append(prefix + str(key))
        if isinstance(value, dict):
            keys += _file_keys(value, prefix + str(key) + ".")
    return keys


def build(ctx: typer.Context, extra: dict[str, tuple[str, Any]] | None = None,
          schema: type[BaseModel] | None = None) -> BaseModel:
    """The command's config: ``--config`` file, then ``extra`` (``key -> (spelling, value)``
    from the command's own options), then the generated options, then KEY=VALUE."""
    schema = schema or ctx.command.spec.model()
    got = given(ctx)
    data: dict = _load_file(got.config) if got.config else {}
    spelled = {key: f"{got.config}: {key}" for key in _file_keys(data)}
    steps = [(k, s, v) for k, (s, v) in (extra or {}).items()] + [(k, s, v) for k, (s, v) in got.options.items()]
    for item in got.overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise AsftError(f"{item!r}: expected KEY=VALUE (e.g. lr=1e-4 or judge.kind=guard), or an option --KEY VALUE")
        steps.append((key.strip(), key.strip(), value))
    for key, spelling, value in steps:
        _set(data, schema, key, _coerce(schema, key, value, spelling), spelling)
        spelled[key] = spelling
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise _one_line(exc, schema, spelled, ctx) from None


def _one_line(exc: ValidationError, schema: type[BaseModel], spelled: dict[str, str], ctx) -> Exception:
    """pydantic's first complaint as one line naming the key as given (``--lr``, ``lr``, ``FILE: lr``)."""
    first = exc.errors()[0]
    loc = [str(p) for p in first["loc"]]
    key = ".".join(loc)
    name = spelled.get(key) or next((s for k, s in spelled.items() if k.startswith(key + ".") and key), None) or next(
        (spelled[".".join(loc[:i])] for i in range(len(loc) - 1, 0, -1) if ".".join(loc[:i]) in spelled), key)
    message = str(first.get("ctx", {}).get("error", first["msg"])).removeprefix("Value error, ")
    if first["type"] == "missing":
        option = "--" + key.replace(".", "-").replace("_", "-")
        return click_errors.UsageError(f"Missing option '{option}' (or {key}=VALUE, or {key} in --config FILE)", ctx)
    if first["type"] == "extra_forbidden":
        return AsftError(f"{name}: unknown key{_closest(schema, key)}")
    if first["type"] == "literal_error":
        choices = str(first["ctx"]["expected"]).replace("'", "")
        noun = name.split(": ")[-1].lstrip("-").split(".")[-1].replace("-", " ").replace("_", " ")
        return AsftError(f"{name} {first['input']!r}: unknown {noun}; choose {choices}")
    got = first.get("input")
    shown = f" (got {got})" if isinstance(got, (str, int, float)) and first["type"] != "value_error" else ""
    return AsftError(f"{name}: {message}{shown}" if name else f"{message}{shown}")
