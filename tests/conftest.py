"""Shared pytest set-up: where the golden fixtures live, and the parity table printed at the end.

Tests that compare with transformers record their worst error with `record_parity(case, column, value)`;
the terminal summary prints one row per case, so `python -m pytest tests/test_golden.py -s` ends with

    case                      max|Δlogits|  ...
    mha                       2.4e-07       ...
"""
from pathlib import Path

import pytest

GOLDEN_DIR = Path(__file__).parent / "fixtures" / "golden"

PARITY = {}  # {(table, case): {column: value}}, filled by record_parity
COLUMN_ORDER = ["max|Δlogits|", "max|Δhidden|", "max|Δattn|", "rel|Δloss|"]  # others follow as first recorded


def record_parity(case: str, column: str, value: float, table: str = "golden parity") -> None:
    """Note a parity figure for the end-of-run table (the worst value wins if recorded twice)."""
    row = PARITY.setdefault((table, case), {})
    row[column] = max(value, row.get(column, value))


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    return GOLDEN_DIR


def pytest_terminal_summary(terminalreporter):
    tables = sorted({t for t, _ in PARITY})
    for table in tables:
        rows = {case: cols for (t, case), cols in PARITY.items() if t == table}
        columns = [c for c in COLUMN_ORDER if any(c in cols for cols in rows.values())]
        for cols in rows.values():
            columns += [c for c in cols if c not in columns]
        width = max(len(c) for c in rows) + 2
        terminalreporter.section(table)
        widths = [max(len(c), 9) + 2 for c in columns]
        terminalreporter.write_line("case".ljust(width) + "".join(c.ljust(w) for c, w in zip(columns, widths)))
        for case in sorted(rows):
            cells = [f"{rows[case][c]:.2e}" if c in rows[case] else "-" for c in columns]
            terminalreporter.write_line(case.ljust(width) + "".join(v.ljust(w) for v, w in zip(cells, widths)))
