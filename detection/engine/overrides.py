"""Command-line `key=value` overrides of config dataclasses, e.g. `solver.epochs=2 data.train_scales=96,128`.

Values are converted to the field's annotated type: int, float, bool (true/false/1/0/yes/no), str, `X | None`
("none" → None), tuple/list of X (comma separated, brackets optional); anything else is parsed as a Python
literal. Unknown keys raise an error that lists the valid ones; `config_lines` lists every key with its value
(`--print-config`).

`model.num_classes=N` is a shortcut: on a detector config it sets the class count of every box head of every
stage and of the mask head (`model.roi_head.stages[i].box_head.num_classes`, `model.roi_head.mask_head.num_classes`),
which a dotted key cannot reach inside the tuple of stages.
"""

import ast
import dataclasses
import types
import typing

from .errors import UserError


def _convert(text: str, annotation, key: str):
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if text.strip().lower() in ("none", "null") and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _convert(text, option, key)
            except ValueError as err:
                errors.append(str(err))
        raise ValueError("; ".join(errors))
    if origin in (tuple, list):
        items = _sequence_items(text, key)
        item_type = args[0] if args else str
        return origin(_convert(s, item_type, key) for s in items)
    if annotation is bool:
        lowered = text.strip().lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
        raise ValueError(f"{key}: expected a boolean (true/false), got {text!r}")
    if annotation in (int, float, str):
        try:
            return annotation(text)
        except ValueError:
            raise ValueError(f"{key}: expected {annotation.__name__}, got {text!r}") from None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _sequence_items(text: str, key: str) -> list[str]:
    """The items of `9,11`, `(9,11)`, `[9, 11]`, `(9,)` or `9,`; unclosed brackets and empty items (`(9,`,
    `9,,11`) are refused: they are usually a command line cut short."""
    body = text.strip()
    pairs = {"(": ")", "[": "]"}
    if body[:1] in pairs or body[-1:] in pairs.values():
        if body[:1] not in pairs or body[-1:] != pairs[body[:1]]:
            raise ValueError(f"{key}: unbalanced brackets in {text!r} (write e.g. (9,11) or 9,11)")
        body = body[1:-1]
    items = [s.strip() for s in body.split(",")]
    if len(items) > 1 and items[-1] == "":
        items.pop()  # a one-tuple: (9,) or 9,
    if items == [""]:
        return []
    if any(item == "" for item in items):
        raise ValueError(f"{key}: empty item in {text!r} (write e.g. (9,11) or 9,11)")
    return items


def apply_override(config, assignment: str) -> None:
    """Apply one `a.b.c=value` to the nested dataclass `config`, in place."""
    if "=" not in assignment:
        raise ValueError(f"override {assignment!r} must look like key=value (e.g. solver.epochs=2)")
    key, text = assignment.split("=", 1)
    parts = key.strip().split(".")
    if parts == ["model", "num_classes"] and _set_detector_num_classes(config, text):
        return
    target = config
    for depth, name in enumerate(parts):
        if not dataclasses.is_dataclass(target):
            raise ValueError(f"override {key!r}: {'.'.join(parts[:depth])} is not a config section")
        hints = typing.get_type_hints(type(target))
        names = [f.name for f in dataclasses.fields(target)]
        if name not in names:
            where = ".".join(parts[:depth]) or "the config"
            raise ValueError(f"unknown config key {key!r}: {where} has no field {name!r}; valid: {', '.join(names)} "
                             "(--print-config lists every key)")
        if depth == len(parts) - 1:
            annotation = hints.get(name, typing.Any)
            if annotation in (object, typing.Any):
                annotation = type(getattr(target, name))
            setattr(target, name, _convert(text, annotation, key))
        else:
            target = getattr(target, name)


def _set_detector_num_classes(config, text: str) -> bool:
    """The `model.num_classes` shortcut; False when the model config has a real `num_classes` field instead."""
    from ..modeling.config import ModelConfig, set_num_classes

    model = getattr(config, "model", None)
    if not isinstance(model, ModelConfig):
        return False
    set_num_classes(model, _convert(text, int, "model.num_classes"))
    return True


def apply_overrides(config, assignments: list[str]) -> None:
    for assignment in assignments:
        apply_override(config, assignment)


def config_lines(config, prefix: str = "") -> list[str]:
    """`key = value` for every leaf field of the nested dataclass `config` (tuples of dataclasses, such as the
    R-CNN stages, are listed with an index: `model.roi_head.stages[0].box_head.num_classes`)."""
    lines = []
    for f in dataclasses.fields(config):
        value, key = getattr(config, f.name), prefix + f.name
        if dataclasses.is_dataclass(value):
            lines += config_lines(value, key + ".")
        elif isinstance(value, (tuple, list)) and value and all(dataclasses.is_dataclass(v) for v in value):
            for i, item in enumerate(value):
                lines += config_lines(item, f"{key}[{i}].")
        else:
            lines.append(f"{key} = {value!r}")
    return lines


def resolve_config(name_or_path: str, assignments: list[str]):
    """The config `name_or_path` with `assignments` applied; UserError for an unknown config or a bad override."""
    from ..configs import get_config

    try:
        config = get_config(name_or_path)
    except (KeyError, FileNotFoundError) as err:
        raise UserError(err.args[0] if err.args else str(err)) from None
    try:
        apply_overrides(config, assignments)
    except ValueError as err:
        raise UserError(str(err)) from None
    return config


def load_config(name_or_path: str, assignments: list[str]):
    """Like `resolve_config`, but returns None after printing the `error:` line."""
    import sys

    try:
        return resolve_config(name_or_path, assignments)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return None
