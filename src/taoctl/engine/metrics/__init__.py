"""Metrics shared by tasks."""

import json
import math


def report_json(data) -> str:
    """``data`` as JSON text with every NaN or infinity written as ``null``.

    JSON has no such numbers: Python's default bare ``NaN`` makes a results file that strict
    parsers (jq, JavaScript, Go) reject, and a diverged run's metrics are exactly where it appears.
    """
    return json.dumps(_finite(data), indent=2, allow_nan=False) + "\n"


def _finite(value):
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
