"""Where a run's results live: a local path, or any ``pyarrow.fs`` URI (like Ray Train's ``storage_path``).

A plain path (a shared filesystem mounted on every node, in production) is written directly. A URI —
``file:///shared/runs/x``, ``s3://bucket/runs/x``, ``gs://…``, ``hdfs://…``, whatever ``pyarrow.fs.FileSystem.from_uri``
opens — is written through a local staging directory that is mirrored to the URI after every checkpoint and when the
run ends (also when it stops on SIGTERM or fails), so the metrics, checkpoints, plots and the trained adapter outlive
the job and the node. ``--resume URI`` first copies the run back into the staging directory.

    storage = RunStorage.open("file:///tmp/runs/a")    # .local: the directory the run writes to
    storage.pull()                                     # --resume: URI -> staging (no-op for a plain path)
    ...; storage.push()                                # staging -> URI (no-op for a plain path)
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path

_URI = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
STAGING_ENV = "POLYAUDIO_STAGING_DIR"


def is_uri(target: str) -> bool:
    return bool(_URI.match(str(target)))


class RunStorage:
    def __init__(self, local: Path, uri: str | None = None):
        self.local = local
        self.uri = uri
        self._fs = None
        self._remote_path = ""
        if uri is not None:
            import pyarrow.fs as pafs

            try:
                self._fs, self._remote_path = pafs.FileSystem.from_uri(uri)
            except Exception as exc:  # noqa: BLE001 - a clear error that names the URI
                raise ValueError(f"run directory {uri!r}: pyarrow.fs cannot open it ({exc})") from exc

    @classmethod
    def open(cls, target: str) -> "RunStorage":
        """A plain path is used as is; a URI gets a staging directory under ``$POLYAUDIO_STAGING_DIR`` (default
        ``~/.cache/polyaudio_rl/staging``), one per URI."""
        if not is_uri(target):
            return cls(Path(target))
        root = Path(os.environ.get(STAGING_ENV) or Path.home() / ".cache" / "polyaudio_rl" / "staging")
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", target.split("://", 1)[1]).strip("_")[-60:]
        local = root / f"{name}-{hashlib.sha256(target.encode()).hexdigest()[:10]}"
        return cls(local, target)

    def __str__(self) -> str:
        return self.uri or str(self.local)

    def exists(self) -> bool:
        if self.uri is None:
            return self.local.is_dir()
        import pyarrow.fs as pafs

        return self._fs.get_file_info(self._remote_path).type == pafs.FileType.Directory

    def pull(self) -> None:
        """URI -> staging (the staging copy is replaced). Nothing to do for a plain path."""
        if self.uri is None:
            return
        import pyarrow.fs as pafs

        if not self.exists():
            raise FileNotFoundError(f"run directory {self.uri} does not exist")
        if self.local.exists():
            shutil.rmtree(self.local)
        self.local.mkdir(parents=True)
        pafs.copy_files(self._remote_path, str(self.local), source_filesystem=self._fs,
                        destination_filesystem=pafs.LocalFileSystem())

    def push(self) -> None:
        """Staging -> URI: every file of the run directory, overwriting older copies. Nothing to do for a plain
        path. Half-written checkpoint directories are never pushed mid-write: checkpoints are renamed into place
        (``polyaudio_rl.core.atomic``) before this runs."""
        if self.uri is None or not self.local.is_dir():
            return
        import pyarrow.fs as pafs

        self._fs.create_dir(self._remote_path, recursive=True)
        pafs.copy_files(str(self.local), self._remote_path, source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=self._fs)


__all__ = ["RunStorage", "is_uri", "STAGING_ENV"]
