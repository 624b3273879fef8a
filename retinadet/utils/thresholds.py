"""Which score threshold a prediction runs at: ``--conf`` when given, else the per-class thresholds a
checkpoint (or an ONNX export's metadata) stores from ``val --operating-point ... --save-thresholds``,
else 0.25. Torch-free: the ONNX runner decides the same way."""

from __future__ import annotations

from collections.abc import Sequence

DEFAULT_CONF = 0.25


def resolve_thresholds(class_names: Sequence[str], stored: dict | None, conf: float | None,
                       floor: float = 0.0) -> tuple[float, list[float] | None, str | None]:
    """(the threshold to run at, per-class thresholds to apply after or None, a line saying so or None).
    Classes the stored set has no threshold for get 0.25; none goes below ``floor`` (what an export kept)."""
    if conf is not None or not (isinstance(stored, dict) and stored.get("per_class")):
        return max(floor, DEFAULT_CONF if conf is None else conf), None, None
    values = [max(floor, float(stored["per_class"].get(name, DEFAULT_CONF))) for name in class_names]
    shown = ", ".join(f"{n} {v:.3f}" for n, v in zip(class_names, values))
    message = (f"using the stored per-class thresholds ({stored.get('spec')} on {stored.get('split')}): {shown}; "
               "--conf overrides them")
    return min(values), values, message
