"""Named size presets and the argument checks the models share."""

from __future__ import annotations

from collections.abc import Mapping


def resolve_size(kind: str, presets: Mapping[str, Mapping[str, float]], preset: str,
                 **overrides: float | None) -> dict[str, float]:
    """The preset's sizes, with every override that is not ``None`` applied."""
    if preset not in presets:
        raise ValueError(f"unknown {kind} preset {preset!r}; choose one of {', '.join(presets)}")
    size = dict(presets[preset])
    size.update({key: value for key, value in overrides.items() if value is not None})
    return size


def check_positive(non_negative: tuple[str, ...] = (), **values: float) -> None:
    """``ValueError`` unless every value is > 0 (>= 0 for the names in ``non_negative``)."""
    for name, value in values.items():
        if value < 0 or (value == 0 and name not in non_negative):
            raise ValueError(f"{name} must be positive, got {value}")


def check_rates(**values: float) -> None:
    """``ValueError`` unless every value is a probability in [0, 1)."""
    for name, value in values.items():
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value}")
