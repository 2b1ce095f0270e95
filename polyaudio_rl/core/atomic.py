"""Write a directory atomically: readers see the old directory or the complete new one, never a half-written one.

Used for everything a crash must not leave half-done: learner checkpoints, the tiny checkpoint, merged models.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_dir(out: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary directory next to ``out``; when the block ends without an error it becomes ``out``
    (an older ``out`` is moved aside first and removed last). On any error the temporary directory is removed and
    ``out`` is left as it was."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700: a checkpoint is shared with other users' jobs
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f"{out.name}.old-", dir=out.parent))
            os.replace(out, old / out.name)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
