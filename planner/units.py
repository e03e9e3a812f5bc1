"""Units: the one parser for token counts and memory sizes, and the formatters for output.

Token counts use binary multipliers (docs/cli.md, units): ``K`` = 1024, ``M`` = 1,048,576, so "4M" is
4,194,304 tokens and "128K" is 131,072. Memory sizes accept ``B``, the decimal ``KB/MB/GB/TB`` (powers of
1000) and the binary ``KiB/MiB/GiB/TiB`` (powers of 1024); output shows GiB with the unit.

Every byte and token constant in the code base comes from here: no bare 1e9 or 2**30 in formulas.
Leaves out: anything that is not a count of tokens or bytes (times are plain seconds).
"""

from __future__ import annotations

import re

KIB = 1024
MIB = 1024**2
GIB = 1024**3
TIB = 1024**4
KB = 1000
MB = 1000**2
GB = 1000**3
TB = 1000**4

TOKEN_MULTIPLIERS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}
BYTE_MULTIPLIERS = {
    "": 1,
    "B": 1,
    "KB": KB,
    "MB": MB,
    "GB": GB,
    "TB": TB,
    "KIB": KIB,
    "MIB": MIB,
    "GIB": GIB,
    "TIB": TIB,
}

_NUMBER_UNIT = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([A-Za-z]*)\s*$")


class UnitError(ValueError):
    """A size or count that cannot be parsed, or is not positive."""


def _split(text: str, what: str) -> tuple[float, str]:
    if not isinstance(text, str):
        text = str(text)
    match = _NUMBER_UNIT.match(text.replace("_", "").replace(",", ""))
    if not match:
        raise UnitError(f"cannot parse {what} {text!r}")
    return float(match.group(1)), match.group(2).upper()


def parse_tokens(text: str | int) -> int:
    """Parse a token count: "4M" -> 4194304, "128K" -> 131072, "1.5K" -> 1536, "32768" -> 32768.

    Raises UnitError for text that is not a positive whole number of tokens.
    """
    if isinstance(text, int) and not isinstance(text, bool):
        value, unit = float(text), ""
    else:
        value, unit = _split(text, "token count")
    unit = unit.removesuffix("TOKENS").removesuffix("TOK")
    if unit not in TOKEN_MULTIPLIERS:
        raise UnitError(f"unknown token unit {unit!r} in {text!r} (use K = 1024 or M = 1048576)")
    tokens = value * TOKEN_MULTIPLIERS[unit]
    if tokens != int(tokens):
        raise UnitError(f"token count {text!r} is not a whole number of tokens ({tokens})")
    if tokens <= 0:
        raise UnitError(f"token count must be positive, got {text!r}")
    return int(tokens)


def parse_bytes(text: str | int) -> int:
    """Parse a memory size: "24GB" -> 24e9, "24GiB" -> 24 * 2**30, "512MiB", "1000" (bytes).

    Decimal units are powers of 1000, binary units (KiB...) powers of 1024. Raises UnitError for text that
    is not a positive size.
    """
    if isinstance(text, int) and not isinstance(text, bool):
        value, unit = float(text), ""
    else:
        value, unit = _split(text, "memory size")
    if unit not in BYTE_MULTIPLIERS:
        raise UnitError(
            f"unknown memory unit {unit!r} in {text!r} (use B, KB, MB, GB, TB or KiB, MiB, GiB, TiB)"
        )
    nbytes = int(round(value * BYTE_MULTIPLIERS[unit]))
    if nbytes <= 0:
        raise UnitError(f"memory size must be positive, got {text!r}")
    return nbytes


def parse_token_list(text: str) -> list[int]:
    """Parse a sweep: "32K,128K,1M" (a list) or "32K:4M" / "32K:4M:x2" (a geometric range, factor 2 default)
    or "32K:256K:+32K" (an arithmetic range). Returns sorted unique token counts."""
    text = text.strip()
    if ":" in text:
        parts = [p.strip() for p in text.split(":")]
        if len(parts) not in (2, 3):
            raise UnitError(f"cannot parse range {text!r}; use START:STOP[:xFACTOR|:+STEP]")
        start, stop = parse_tokens(parts[0]), parse_tokens(parts[1])
        if stop < start:
            raise UnitError(f"range {text!r} ends before it starts")
        step = parts[2] if len(parts) == 3 else "x2"
        values = []
        if step.startswith("+"):
            increment = parse_tokens(step[1:])
            value = start
            while value <= stop:
                values.append(value)
                value += increment
        else:
            factor = float(step.lstrip("x*"))
            if factor <= 1:
                raise UnitError(f"range factor must be > 1 in {text!r}")
            value = float(start)
            while value <= stop * (1 + 1e-9):
                values.append(int(round(value)))
                value *= factor
        return sorted(set(values))
    items = [item for item in text.split(",") if item.strip()]
    if not items:
        raise UnitError(f"empty context list {text!r}")
    return sorted({parse_tokens(item) for item in items})


def format_bytes(nbytes: float, digits: int = 2) -> str:
    """Format bytes as GiB (or MiB below 1 GiB): 16106127360 -> '15.00 GiB'."""
    if abs(nbytes) >= GIB or nbytes == 0:
        return f"{nbytes / GIB:.{digits}f} GiB"
    return f"{nbytes / MIB:.{digits}f} MiB"


def format_tokens(tokens: int) -> str:
    """Format a token count with the binary suffix when exact: 131072 -> '128K', 4194304 -> '4M'."""
    for suffix, mult in (("M", 1024**2), ("K", 1024)):
        if tokens >= mult and tokens % mult == 0:
            return f"{tokens // mult}{suffix}"
    if tokens >= 1024**2:
        return f"{tokens / 1024**2:.2f}M"
    if tokens >= 1024:
        return f"{tokens / 1024:.1f}K"
    return str(tokens)


def format_seconds(seconds: float) -> str:
    """Format a duration: 0.0123 -> '12.3 ms', 75.0 -> '75.0 s', 4000 -> '1.11 h'."""
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    if seconds < 600:
        return f"{seconds:.1f} s"
    if seconds < 3 * 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def format_rate(value_per_s: float, unit: str) -> str:
    """Format a rate with an SI prefix: (5.5e10, 'B') -> '55.0 GB/s', (7.8e14, 'FLOP') -> '780.0 TFLOP/s'."""
    for prefix, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value_per_s) >= scale:
            return f"{value_per_s / scale:.1f} {prefix}{unit}/s"
    return f"{value_per_s:.1f} {unit}/s"
