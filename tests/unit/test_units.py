"""planner/units.py: the one parser of token counts and memory sizes, and the formatters."""

import pytest

from planner.units import (GB, GIB, KIB, MIB, UnitError, format_bytes, format_rate, format_seconds, format_tokens,
                           parse_bytes, parse_token_list, parse_tokens)


@pytest.mark.parametrize("text, tokens", [
    ("4M", 4 * 1024**2), ("128K", 131072), ("1.5K", 1536), ("32768", 32768), (" 8k ", 8192),
    ("1_024", 1024), ("2,048", 2048), (4096, 4096), ("1G", 1024**3), ("16Ktokens", 16384),
])
def test_parse_tokens(text, tokens):
    assert parse_tokens(text) == tokens


@pytest.mark.parametrize("text", ["0", "-5", "abc", "", "1.3K", "4X", "0.5", "K", True])
def test_parse_tokens_rejects(text):
    with pytest.raises(UnitError):
        parse_tokens(text)


@pytest.mark.parametrize("text, nbytes", [
    ("24GB", 24 * GB), ("24GiB", 24 * GIB), ("512MiB", 512 * MIB), ("1000", 1000), ("1.5 KiB", 1536),
    ("2TB", 2 * 1000**4), ("1tib", 1024**4), ("3B", 3), (77, 77), ("0.5GB", 500_000_000),
])
def test_parse_bytes(text, nbytes):
    assert parse_bytes(text) == nbytes


@pytest.mark.parametrize("text", ["0", "0GB", "-1GB", "lots", "24 GHz", "GB", ""])
def test_parse_bytes_rejects(text):
    with pytest.raises(UnitError):
        parse_bytes(text)


def test_token_lists_and_ranges():
    assert parse_token_list("128K,32K,32K,1M") == [32768, 131072, 1048576]
    assert parse_token_list("32K:256K") == [32768, 65536, 131072, 262144]
    assert parse_token_list("32K:128K:x4") == [32768, 131072]
    assert parse_token_list("32K:128K:+32K") == [32768, 65536, 98304, 131072]
    for bad in ("4M:1K", "1K:2K:x1", "1K:2K:3K:4K", "", ",", "1K:zz"):
        with pytest.raises(UnitError):
            parse_token_list(bad)


def test_formatters():
    assert format_bytes(15 * GIB) == "15.00 GiB"
    assert format_bytes(512 * MIB) == "512.00 MiB"
    assert format_bytes(0) == "0.00 GiB"
    assert format_tokens(131072) == "128K" and format_tokens(4 * 1024**2) == "4M"
    assert format_tokens(1536) == "1.5K" and format_tokens(100) == "100"
    assert format_seconds(0.0123) == "12.3 ms" and format_seconds(75) == "75.0 s"
    assert format_seconds(4000) == "66.7 min" and format_seconds(4 * 3600) == "4.00 h"
    assert format_rate(5.5e10, "B") == "55.0 GB/s" and format_rate(7.8e14, "FLOP") == "780.0 TFLOP/s"
    assert KIB == 1024 and GB == 10**9
