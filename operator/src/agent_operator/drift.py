"""Drift detection: does a live object still carry every field the operator applied (pure)."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from kubernetes.utils.quantity import parse_quantity


def _same_scalar(want: Any, have: Any) -> bool:
    if want == have:
        return True
    # The API server canonicalises quantities ("0.5" CPU comes back as "500m").
    if isinstance(want, str | int) and isinstance(have, str | int):
        try:
            want_q = parse_quantity(want)  # type: ignore[no-untyped-call]
            have_q = parse_quantity(have)  # type: ignore[no-untyped-call]
            return bool(Decimal(want_q) == Decimal(have_q))
        except (ValueError, InvalidOperation):
            return False
    return False


def drifted_fields(want: Any, have: Any, path: str = "") -> list[str]:
    """Paths where `have` no longer holds what `want` says (extra fields in `have` are fine)."""
    if isinstance(want, Mapping):
        if not isinstance(have, Mapping):
            return [path or "."]
        out: list[str] = []
        for key, value in want.items():
            sub = f"{path}.{key}"
            if key not in have:
                out.append(sub)
            else:
                out.extend(drifted_fields(value, have[key], sub))
        return out
    if isinstance(want, list):
        if not isinstance(have, list) or len(want) != len(have):
            return [path]
        out = []
        for index, (w, h) in enumerate(zip(want, have, strict=True)):
            out.extend(drifted_fields(w, h, f"{path}[{index}]"))
        return out
    return [] if _same_scalar(want, have) else [path]
