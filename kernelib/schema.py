"""The pydantic bases of every parameter model, and how their validation errors read."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator


class Exact(BaseModel):
    """Unknown keys refused (the base of the data specs, whose 'kind' discriminates)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Strict(Exact):
    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info) -> Any:
        """`epochs: true` is a mistake, not 1 epoch: refuse booleans where a number goes."""
        annotation = cls.model_fields[info.field_name].annotation
        if isinstance(value, bool) and annotation in (int, float, int | None, float | None):
            raise ValueError(f"expected a number, received the boolean {value}")
        return value


def format_errors(err: ValidationError, where: str) -> str:
    """One line per error: the key path, what is wrong, what was received."""
    lines = []
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            msg = "unknown key; remove it or fix its spelling"
        else:
            msg = e["msg"]
        received = e.get("input")
        shown = repr(received) if not isinstance(received, dict) else "{...}"
        if len(shown) > 80:
            shown = shown[:77] + "..."
        lines.append(f"  {path}: {msg} (received {shown})")
    return f"invalid {where}:\n" + "\n".join(lines)


def describe_model(model: type[BaseModel], prefix: str = "") -> list[dict[str, Any]]:
    """Every field of `model` (nested models' fields as `outer.inner`): name, type, default, help."""
    rows = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows += describe_model(annotation, f"{prefix}{name}.")
            continue
        default = field.get_default(call_default_factory=True)
        if isinstance(default, list):
            default = [d.model_dump(exclude_none=True) if isinstance(d, BaseModel) else d
                       for d in default]
        rows.append({"name": prefix + name, "type": type_name(annotation),
                     "default": default, "help": field.description or ""})
    return rows


def type_name(annotation: Any) -> str:
    """A field's type as a short string (`int`, `Literal['nll', 'accuracy']`, ...)."""
    if isinstance(annotation, type):
        return annotation.__name__
    name = re.sub(r"kernelib\.[a-z_]+\.", "", str(annotation).replace("typing.", ""))
    return re.sub(r"Annotated\[(.*?), FieldInfo\(.*?\)\]", r"\1", name)  # drop pydantic's tags
