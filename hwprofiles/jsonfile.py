"""Reading a JSON file with one readable error line, for every file headplan reads (profiles, plans, prompt ids).

It sits at the bottom of the dependency chain (hwprofiles <- planner <- executor) so that every layer can use it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_json(path: str | Path, what: str, error: type[Exception]) -> Any:
    """The parsed content of ``path``; ``error`` with "<what> file not found: <path>" or "cannot read <what>
    <path>: <reason>" when it is missing or not JSON."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise error(f"{what} file not found: {path}") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise error(f"cannot read {what} {path}: {exc}") from None
