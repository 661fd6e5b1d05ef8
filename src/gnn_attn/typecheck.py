"""Every config value checked against the type its consumer declares.

A config node with a ``_target_`` is a constructor call; the constructor's signature
already says what each argument must be (``max_epochs: int | None`` in Lightning's
``Trainer``, ``concat: bool`` in a backbone). :func:`check_node` reads those annotations
(``typing.get_type_hints``, following ``**kwargs`` to the base class's constructor) and
validates each value the config gives with pydantic's ``TypeAdapter``, the library's own
validator of annotated types, so no list of keys is kept anywhere:

    trainer.max_epochs=abc   →  Error: trainer.max_epochs=abc: expected int | None
                                 (an argument of lightning.pytorch.trainer.trainer.Trainer) ...

Values are validated as pydantic's lax mode reads Python values (an int is a float, a
list is a tuple, a str is a ``Path``), with one rule stricter: a string is never read as
a number or a boolean (``concat: maybe``, ``'5'``: a word where a number is wanted), since
the constructor would receive the string itself. Annotations pydantic cannot express, and
values that are interpolations not yet resolvable (``${hydra:runtime.output_dir}`` while
composing), are left to the constructor.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Iterator
from typing import Any

from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import ConfigDict, TypeAdapter, ValidationError

from gnn_attn.errors import UserError

_ANY = object()  # an annotation that admits every value (or one that cannot be checked)


def check_config(
    cfg: DictConfig,
    skip: tuple[str, ...] = ("hydra",),
    not_arguments: dict[str, tuple[str, ...]] | None = None,
) -> None:
    """:func:`check_node` for every node of ``cfg`` that has a ``_target_`` (top-level
    keys in ``skip`` left out: Hydra checks its own; ``not_arguments`` maps a key to the
    keys of its node that are not arguments of its ``_target_``, e.g. the template's keys
    of a model config)."""
    for key in target_keys(OmegaConf.to_container(cfg, resolve=False), skip):
        check_node(key, OmegaConf.select(cfg, key), (not_arguments or {}).get(key, ()))


def check_call(key: str, node: Any) -> None:
    """:func:`check_node` for the constructor call ``node`` (config key ``key``) and
    every constructor call nested in it."""
    check_node(key, node)
    if not isinstance(node, (dict, DictConfig)):
        return
    tree = node if isinstance(node, dict) else OmegaConf.to_container(node, resolve=False)
    for sub in target_keys(tree):
        inner = OmegaConf.select(node, sub) if isinstance(node, DictConfig) else _at(node, sub)
        check_node(f"{key}.{sub}", inner)


def _at(tree: Any, dotted: str) -> Any:
    """The item of a plain container at a dotted key (list items by their index)."""
    for part in dotted.split("."):
        tree = tree[int(part)] if isinstance(tree, list) else tree[part]
    return tree


def target_keys(tree: Any, skip: tuple[str, ...] = (), prefix: str = "") -> Iterator[str]:
    """The dotted key of every ``_target_`` node inside the plain container ``tree``
    (interpolations unresolved), outer first, ``tree`` itself left out."""
    if isinstance(tree, dict):
        if "_target_" in tree and prefix:
            yield prefix
        items = ((str(k), v) for k, v in tree.items() if prefix or str(k) not in skip)
    elif isinstance(tree, list):
        items = ((str(i), v) for i, v in enumerate(tree))
    else:
        return
    for key, value in items:
        yield from target_keys(value, (), f"{prefix}.{key}" if prefix else key)


def check_node(key: str, node: Any, ignore: tuple[str, ...] = ()) -> None:
    """Raise a :class:`UserError` for the first value of the constructor call ``node``
    (config key ``key``) that does not have the type its ``_target_`` declares for it
    (the keys in ``ignore`` are not passed to it)."""
    if not isinstance(node, (dict, DictConfig)) or "_target_" not in node:
        return
    target = str(node["_target_"])
    try:
        declared = parameter_types(target)
    except Exception:  # not importable: building it names the problem
        return
    for name in [str(k) for k in node]:
        if name.startswith("_") or name in ignore or declared.get(name, _ANY) is _ANY:
            continue
        value = _value(node, name)
        if value is _ANY:
            continue
        problem = mismatch(declared[name], value)
        if problem is not None:
            raise UserError(
                f"{key}.{name}={_show(value)}: expected {type_name(declared[name])} (an "
                f"argument of {target}){problem}; pass {key}.{name}=<a value of that type>"
            )


def _value(node: Any, name: str) -> Any:
    """The plain value of ``node[name]``, or ``_ANY`` for one that holds a constructor
    call at any depth (each is checked on its own) or an interpolation not resolvable
    yet (while composing)."""
    try:
        value = node[name]
        if isinstance(value, (DictConfig, ListConfig)):
            value = OmegaConf.to_container(value, resolve=True)
    except (OmegaConfBaseException, ValueError, KeyError):
        return _ANY
    return _ANY if _holds_target(value) else value


def _holds_target(value: Any) -> bool:
    if isinstance(value, dict):
        return "_target_" in value or any(_holds_target(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_holds_target(v) for v in value)
    return False


def mismatch(annotation: Any, value: Any) -> str | None:
    """``None`` when ``value`` has the type ``annotation`` (or pydantic cannot read the
    annotation), else what is wrong: ``""``, or a short reason to append."""
    adapter = _adapter(annotation)
    if adapter is None:
        return None
    try:
        result = adapter.validate_python(value)
    except ValidationError:
        if _has_numbers(value):  # Hydra reads name=2024 as a number: a str is meant
            return mismatch(annotation, _numbers_as_strings(value))
        return ""
    except Exception:  # a validator that cannot take this value at all: the constructor's
        return None
    return _coerced(value, result)


def _coerced(value: Any, result: Any) -> str | None:
    """Where pydantic read a string as a number or a boolean, or a boolean as a number
    (at any depth of a list or dict), the reason; else ``None``: the constructor would
    receive the value itself, not what pydantic made of it."""
    if isinstance(value, str) and isinstance(result, (bool, int, float)):
        return ", not a string"
    if (
        isinstance(value, bool)
        and isinstance(result, (int, float))
        and not isinstance(result, bool)
    ):
        return ", not a boolean"
    if isinstance(value, (list, tuple)) and isinstance(result, (list, tuple)):
        pairs = zip(value, result, strict=False)
    elif isinstance(value, dict) and isinstance(result, dict):
        pairs = ((v, result.get(k)) for k, v in value.items())
    else:
        return None
    return next((r for r in (_coerced(v, w) for v, w in pairs) if r is not None), None)


def _has_numbers(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return any(_has_numbers(v) for v in value)
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _numbers_as_strings(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_numbers_as_strings(v) for v in value]
    return str(value) if _has_numbers(value) else value


def type_name(annotation: Any) -> str:
    """``int | None``, ``list[int] | str | int``: an annotation as one writes it."""
    if annotation is type(None):
        return "None"
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Union or type(annotation).__name__ == "UnionType":
        return " | ".join(type_name(a) for a in args)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(type_name(a) for a in args)}]" if args else name
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


@functools.cache
def parameter_types(target: str) -> dict[str, Any]:
    """The declared type of each keyword argument of ``target`` (an import path of a
    class or function). For a class whose constructor takes ``**kwargs``, its bases'
    constructors are read too (``PlanetoidDataModule`` passes ``loader`` to
    ``NodeDataModule``). A parameter without a readable annotation admits anything."""
    obj = get_object(target)
    functions = []
    if inspect.isclass(obj):
        for klass in obj.__mro__:
            init = klass.__dict__.get("__init__")
            if init is None:
                continue
            functions.append(init)
            params = inspect.signature(init).parameters.values()
            if not any(p.kind is p.VAR_KEYWORD for p in params):
                break
    else:
        functions.append(obj)
    declared: dict[str, Any] = {}
    for fn in functions:
        hints = _hints(fn)
        for i, (name, param) in enumerate(inspect.signature(fn).parameters.items()):
            if i == 0 and inspect.isclass(obj):  # self
                continue
            if name in declared or param.kind in (param.VAR_KEYWORD, param.VAR_POSITIONAL):
                continue
            declared[name] = hints.get(name, _ANY)
    return declared


def _hints(fn: Any) -> dict[str, Any]:
    """``fn``'s annotations, evaluated; one that cannot be evaluated (a name imported
    only for type checkers) is left out."""
    try:
        return typing.get_type_hints(fn)
    except Exception:
        pass
    hints = {}
    module = inspect.getmodule(fn)
    namespace = vars(module) if module else {}
    for name, ann in getattr(fn, "__annotations__", {}).items():
        try:
            hints[name] = eval(ann, namespace) if isinstance(ann, str) else ann
        except Exception:
            continue
    return hints


@functools.cache
def _adapter(annotation: Any) -> TypeAdapter | None:
    if annotation is Any or annotation is inspect.Parameter.empty:
        return None
    try:
        return TypeAdapter(annotation, config=ConfigDict(arbitrary_types_allowed=True))
    except Exception:  # pydantic has no schema for it: the constructor checks
        return None


def _show(value: Any) -> str:
    return value if isinstance(value, str) else repr(value)
