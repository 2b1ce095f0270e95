"""The parts of ``benchmarks/chaos.py``, the external chaos harness (issue 29): victims, moments, watching, verdict, report."""
