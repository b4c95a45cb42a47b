"""Why an SQLite database cannot be written: what the error codes do not say.

SQLite reports a full disk as ``SQLITE_FULL`` but an immutable file or a file system turned
read-only under a running process only as ``disk I/O error`` (``SQLITE_IOERR_WRITE``), and
a read-only directory at start as ``unable to open database file``. ``unwritable_because``
looks at the file system and the database's files and names what it finds, so the log line
and the readiness answer say what to fix. Called only when a write has failed.
"""

from __future__ import annotations

import fcntl
import os
import struct
import sys

LOW_SPACE_BYTES = 1 << 20
READ_ONLY = "the file system is read-only"
_FS_IOC_GETFLAGS = 0x80086601  # Linux, 64-bit: _IOR('f', 1, long)
_FS_IMMUTABLE_FL = 0x10
_FS_APPEND_FL = 0x20


def unwritable_because(path: str) -> str | None:
    """What stands in the way of writing the database at ``path``; None if nothing is seen."""
    directory = os.path.dirname(os.path.abspath(path))
    reasons = _file_system(directory)
    if reasons == [READ_ONLY]:
        return READ_ONLY  # every file in it is read-only: nothing more to say
    for name in (path, f"{path}-wal", f"{path}-shm", directory):
        if os.path.exists(name):
            reason = _file(name)
            if reason:
                reasons.append(reason)
    return "; ".join(reasons) or None


def _file_system(directory: str) -> list[str]:
    try:
        stats = os.statvfs(directory)
    except OSError as exc:
        return [f"{directory} cannot be examined ({exc.strerror})"]
    if stats.f_flag & os.ST_RDONLY:
        return [READ_ONLY]
    free = stats.f_bavail * stats.f_frsize
    if free < LOW_SPACE_BYTES:
        return [f"the file system has {free // 1024} KiB free"]
    return []


def _file(name: str) -> str | None:
    flags = _attributes(name)
    if flags & _FS_IMMUTABLE_FL:
        return f"{name} is immutable (chattr -i clears it)"
    if flags & _FS_APPEND_FL:
        return f"{name} is append-only (chattr -a clears it)"
    if not os.access(name, os.W_OK):
        return f"{name} is not writable by this process"
    return None


def _attributes(name: str) -> int:
    """The inode flags (``lsattr``), 0 where they cannot be read."""
    if not sys.platform.startswith("linux"):
        return 0
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return 0
    try:
        raw = fcntl.ioctl(fd, _FS_IOC_GETFLAGS, bytes(8))
        return int(struct.unpack("i", raw[:4])[0])
    except OSError:
        return 0
    finally:
        os.close(fd)
