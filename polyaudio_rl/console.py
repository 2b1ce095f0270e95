"""The quiet console of ``python -m polyaudio_rl.train``: stage headers, one progress bar per long stage, a summary
table; everything else goes to ``RUN_DIR/logs/`` (one file per component).

Routed to files (and also shown live with ``--verbose``):

- Ray worker output (stdout/stderr of every actor and task): ``rollout.log`` (vLLM engine), ``learner.log``
  (DeepSpeed workers), ``reward.log``, ``data.log`` (Ray Data operators), ``workers.log`` (anything else). The
  driver's Ray log dispatcher is re-pointed at these files instead of the console.
- The driver's Python loggers: ``ray.log`` (``ray``, ``ray.data`` -> ``data.log``), ``vllm.log``,
  ``deepspeed.log``, ``transformers.log`` (+ ``peft``, ``torch``, ``datasets``), ``train.log`` (everything else).
- Python warnings of the driver: ``warnings.log``; each distinct warning is written once.
- Ray Data progress bars are switched off (``DataContext.enable_progress_bars``); the data report goes to
  ``data.log``.

Errors still reach the console: an exception ends the run with its full traceback on stderr and the path of the
log directory (``logs/error.log`` keeps a copy).
"""
from __future__ import annotations

import logging
import sys
import threading
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable, TextIO

# logger name prefix -> component file (longest prefix wins)
LOGGER_FILES = {
    "ray": "ray", "ray.data": "data", "ray.train": "ray", "ray.serve": "serve", "vllm": "vllm",
    "deepspeed": "deepspeed", "DeepSpeed": "deepspeed", "transformers": "transformers", "peft": "transformers",
    "torch": "transformers", "datasets": "transformers", "py.warnings": "warnings", "filelock": "train",
    "urllib3": "train", "matplotlib": "train", "PIL": "train", "httpx": "serve", "httpcore": "serve", "openai": "serve",
}
WORKER_FILES = (("Rollout", "rollout"), ("Learner", "learner"), ("Reward", "reward"), ("Serve", "serve"),
                ("Judge", "serve"), ("Map", "data"), ("Read", "data"), ("Split", "data"), ("Data", "data"),
                ("Stats", "data"), ("Autoscal", "data"), ("streaming_split", "data"))


def worker_component(data: dict[str, Any]) -> str:
    """Which log file a Ray worker's output batch belongs to (by actor/task name)."""
    if data.get("pid") in ("raylet", "autoscaler", "gcs_server"):
        return "ray"
    name = f"{data.get('actor_name') or ''} {data.get('task_name') or ''}"
    for key, comp in WORKER_FILES:
        if key.lower() in name.lower():
            return comp
    return "workers"


def _writes_to_fd2(stream: Any) -> bool:
    try:
        return stream.fileno() == 2
    except (OSError, ValueError, AttributeError):
        return False


def _no_transformers_console_handler() -> None:
    """transformers adds its own stderr handler to its ``transformers`` logger the first time it logs (lazily, after
    :meth:`Console.quiet_loggers` may already have run): its warnings would then reach the console as well as
    ``transformers.log`` (e.g. a Qwen2.5-Omni checkpoint's config check of the unused talker's token ids on every
    load). Making transformers configure that handler now and take it away again keeps it off for good."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # noqa: PERF203 - transformers is a dependency; nothing to quiet without it
        return
    hf_logging.disable_default_handler()


class Console:
    """One per run. ``print`` goes to the console and to ``logs/console.log``; ``log(component, text)`` only to the
    component's file (and to the console when verbose)."""

    def __init__(self, run_dir: str | Path, verbose: bool = False, quiet: bool = False,
                 stream: TextIO | None = None):
        self.dir = Path(run_dir) / "logs"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.verbose = verbose
        self.quiet = quiet                      # no progress bars (tests); headers and results still print
        self.out = stream or sys.stdout
        self._files: dict[str, TextIO] = {}
        self._lock = threading.Lock()
        self._seen_warnings: set[tuple[str, str]] = set()
        self._saved: dict[str, Any] = {}
        self.lines = 0                          # console lines printed through this object

    # -- files ------------------------------------------------------------------------------------------
    def file(self, component: str) -> TextIO:
        with self._lock:
            f = self._files.get(component)
            if f is None:
                f = self._files[component] = open(self.dir / f"{component}.log", "a", buffering=1)
            return f

    def log(self, component: str, text: str) -> None:
        f = self.file(component)
        with self._lock:
            f.write(text if text.endswith("\n") else text + "\n")
        if self.verbose:
            self.out.write(f"({component}) {text}" + ("" if text.endswith("\n") else "\n"))

    def path(self, component: str) -> Path:
        return self.dir / f"{component}.log"

    # -- console ----------------------------------------------------------------------------------------
    def print(self, text: str = "") -> None:
        self.out.write(text + "\n")
        self.out.flush()
        self.lines += text.count("\n") + 1
        self.log("console", text) if not self.verbose else self.file("console").write(text + "\n")

    def header(self, title: str) -> None:
        self.print(f"== {title}")

    def bar(self, total: int, desc: str, initial: int = 0, unit: str = "step"):
        from tqdm import tqdm

        # one line per bar: redraws overwrite it in a terminal; disabled when quiet
        return tqdm(total=total, initial=initial, desc=f"   {desc}", unit=unit, disable=self.quiet, file=self.out,
                    dynamic_ncols=True, leave=True, mininterval=0.5)

    # -- routing ----------------------------------------------------------------------------------------
    def install(self) -> "Console":
        """Route the driver's Python logging and warnings to files (call before heavy imports). Unless verbose, the
        process's file descriptor 2 (native stderr: Ray's C++ core worker, glog, C extensions) goes to
        ``logs/native.log``; Python's ``sys.stderr`` keeps writing to the console."""
        import os

        if not self.verbose:
            try:
                sys.stderr.flush()
                saved = os.dup(2)
                native = os.open(self.dir / "native.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                os.dup2(native, 2)
                os.close(native)
                self._saved["fd2"] = saved
                if getattr(sys.stderr, "fileno", None) and _writes_to_fd2(sys.stderr):
                    # Python's stderr wrote to fd 2: point it at the console (the saved fd). A stream someone put in
                    # its place (a tee, pytest's capture, the ablation runner) keeps receiving what we print.
                    self._saved["stderr"] = sys.stderr
                    sys.stderr = open(os.dup(saved), "w", buffering=1, encoding="utf-8", errors="replace")
            except (OSError, ValueError, AttributeError):  # no real fd 2 (embedded, odd test runners): keep it
                pass
        self._saved["showwarning"] = warnings.showwarning
        warnings.showwarning = self._showwarning
        self.quiet_loggers()
        return self

    def _showwarning(self, message, category, filename, lineno, file=None, line=None) -> None:
        key = (category.__name__, str(message))
        if key in self._seen_warnings:
            return
        self._seen_warnings.add(key)
        self.log("warnings", f"{filename}:{lineno}: {category.__name__}: {message}")

    def quiet_loggers(self) -> None:
        """(Re)point known library loggers at their files; libraries that configure their own console handlers on
        import (ray, ray.data, vllm) lose them, so call this again after importing them."""
        fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        _no_transformers_console_handler()
        for name, comp in LOGGER_FILES.items():
            lg = logging.getLogger(name)
            for h in list(lg.handlers):
                if getattr(h, "_polyaudio", None) != comp:
                    lg.removeHandler(h)
            if not any(getattr(h, "_polyaudio", None) == comp for h in lg.handlers):
                h = logging.StreamHandler(self.file(comp))
                h.setFormatter(fmt)
                h._polyaudio = comp  # type: ignore[attr-defined]
                lg.addHandler(h)
                if self.verbose:
                    v = logging.StreamHandler(self.out)
                    v.setFormatter(fmt)
                    v._polyaudio = comp  # type: ignore[attr-defined]
                    lg.addHandler(v)
            lg.propagate = False
        root = logging.getLogger()
        if not any(getattr(h, "_polyaudio", None) == "train" for h in root.handlers):
            for h in list(root.handlers):
                root.removeHandler(h)
            h = logging.StreamHandler(self.file("train"))
            h.setFormatter(fmt)
            h._polyaudio = "train"  # type: ignore[attr-defined]
            root.addHandler(h)
        try:  # Ray Data: no progress bars on the console
            from ray.data import DataContext

            ctx = DataContext.get_current()
            ctx.enable_progress_bars = False
            if hasattr(ctx, "enable_operator_progress_bars"):
                ctx.enable_operator_progress_bars = False
            if hasattr(ctx, "print_on_execution_start"):
                ctx.print_on_execution_start = False
        except Exception:  # noqa: BLE001 - ray.data missing or changed: nothing to quiet
            pass

    def route_ray_workers(self) -> None:
        """Send Ray workers' stdout/stderr (forwarded to the driver) to the component files instead of the console.
        Needs ``ray.init(log_to_driver=True)`` (the default), then this call."""
        import ray._private.worker as rw

        disp = rw.global_worker_stdstream_dispatcher
        prior = dict(getattr(disp, "handlers", []))  # [(name, handler)]
        if "ray_print_logs" in prior:
            self._saved["ray_print_logs"] = prior["ray_print_logs"]
            disp.remove_handler("ray_print_logs")
        verbose_print: Callable | None = None
        if self.verbose:
            import functools

            verbose_print = functools.partial(rw.print_to_stdstream, ignore_prefix=False)

        def handle(data: dict[str, Any]) -> None:
            comp = worker_component(data)
            head = f"[pid={data.get('pid')} {data.get('actor_name') or data.get('task_name') or ''}]"
            f = self.file(comp)
            with self._lock:
                for line in data.get("lines", []):
                    f.write(f"{head} {line}\n")
            if verbose_print is not None:
                verbose_print(data)

        disp.remove_handler("polyaudio_logs")
        disp.add_handler("polyaudio_logs", handle)

        # Cluster messages (raylet warnings, dead workers, OOM kills) reach the driver through
        # ``print_to_stdstream`` directly: they go to ray.log; one that is not a warning is also shown, once.
        original = self._saved.setdefault("print_to_stdstream", rw.print_to_stdstream)
        seen = self._seen_warnings

        def cluster_message(data: dict[str, Any], ignore_prefix: bool = False) -> None:
            if data.get("pid") not in ("raylet", "autoscaler"):
                return handle(data)
            lines = data.get("lines", [])
            self.log("ray", "\n".join(f"[{data.get('pid')}] {l}" for l in lines))
            first = next((l for l in lines if l.strip()), "")
            key = ("ray", first[:120])
            if not self.verbose and first and "WARNING" not in first[:20] and key not in seen:
                seen.add(key)
                self.out.write(f"   ray: {first[:200]} (more in {self.path('ray')})\n")
            elif self.verbose:
                original(data, ignore_prefix=ignore_prefix)

        rw.print_to_stdstream = cluster_message

    def error(self, exc: BaseException) -> None:
        """The full traceback on stderr (and in logs/error.log), with where to read the component logs."""
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        self.log("error", tb)
        logs = ", ".join(sorted(p.name for p in self.dir.glob("*.log")))
        sys.stderr.write(tb)
        sys.stderr.write(f"error: {type(exc).__name__}: {exc}\n  component logs in {self.dir}/ ({logs})\n")
        sys.stderr.flush()

    def close(self) -> None:
        import os

        if "fd2" in self._saved:
            if "stderr" in self._saved:  # ours: close it and put the original back
                try:
                    sys.stderr.flush()
                    sys.stderr.close()
                except (OSError, ValueError):
                    pass
                sys.stderr = self._saved.pop("stderr")
            fd = self._saved.pop("fd2")
            os.dup2(fd, 2)
            os.close(fd)
        if "print_to_stdstream" in self._saved:
            import ray._private.worker as rw

            rw.print_to_stdstream = self._saved.pop("print_to_stdstream")
            disp = rw.global_worker_stdstream_dispatcher
            disp.remove_handler("polyaudio_logs")
            if "ray_print_logs" in self._saved:  # a Ray that outlives this run prints as before
                disp.add_handler("ray_print_logs", self._saved.pop("ray_print_logs"))
        if "showwarning" in self._saved:
            warnings.showwarning = self._saved.pop("showwarning")
        for name, comp in LOGGER_FILES.items():
            lg = logging.getLogger(name)
            for h in list(lg.handlers):
                if getattr(h, "_polyaudio", None):
                    lg.removeHandler(h)
        root = logging.getLogger()
        for h in list(root.handlers):
            if getattr(h, "_polyaudio", None):
                root.removeHandler(h)
        with self._lock:
            for f in self._files.values():
                f.close()
            self._files.clear()


def table(rows: list[list[str]], header: list[str]) -> list[str]:
    """A plain text table (first column left-aligned, the others right-aligned)."""
    cols = [header, *rows]
    w = [max(len(str(r[i])) for r in cols) for i in range(len(header))]
    fmt = lambda r: "  ".join(str(c).ljust(w[i]) if i == 0 else str(c).rjust(w[i]) for i, c in enumerate(r))  # noqa: E731
    return [fmt(header), "  ".join("-" * x for x in w), *[fmt(r) for r in rows]]
