"""Directory fsync, shared by the writers that promise a file is on disk before their next step.

POSIX makes a new or renamed directory entry durable only when the directory itself is fsynced;
fsyncing the file is not enough. Used by the local-folder destination (a part, then its
metadata), the restore undo journal (an entry before its change) and ``fetch`` (which tolerates
filesystems that refuse it).
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
