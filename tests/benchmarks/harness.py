"""``benchmarks/chaos.py`` loaded as a module (benchmarks/ is not a package) for the harness's tests."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def chaos_module():
    if "chaos_harness" not in sys.modules:  # dataclasses look their module up in sys.modules
        spec = importlib.util.spec_from_file_location("chaos_harness", ROOT / "benchmarks" / "chaos.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules["chaos_harness"] = mod
        spec.loader.exec_module(mod)
    return sys.modules["chaos_harness"]
