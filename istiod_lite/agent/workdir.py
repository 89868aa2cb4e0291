"""The agent's work directory: checked before use, and written without following symlinks.

A ``--work-dir`` is the user's choice.  If it is a symlink, or another user can create entries in
it, that user can plant ``bootstrap.tmp`` or ``envoy.pid`` as a symlink to a file of the agent's
user and have the agent overwrite it (or redirect the sockets).  So the directory itself must not
be a symlink, must belong to the agent's user and must not be writable by group or others; and
every file the agent writes there is created fresh (``O_CREAT | O_EXCL | O_NOFOLLOW``) under a
temporary name and renamed into place, which replaces a planted symlink instead of following it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


class WorkDirError(OSError):
    """The work directory cannot be used safely."""


def prepare_work_dir(path: Path) -> None:
    """Create ``path`` (0700) if missing, then refuse it unless it is a real directory owned by
    this user and not writable by group or others."""
    if not path.is_symlink():
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise WorkDirError(f"work dir {path} is a symbolic link; give its real path")
    if not stat.S_ISDIR(st.st_mode):
        raise WorkDirError(f"work dir {path} is not a directory")
    if st.st_uid != os.geteuid():
        raise WorkDirError(f"work dir {path} belongs to uid {st.st_uid}, not to this user ({os.geteuid()})")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise WorkDirError(f"work dir {path} is writable by other users (mode {stat.S_IMODE(st.st_mode):o}); "
                           "chmod 700 it or choose another")


def write_file(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` atomically, never following a symlink at ``path`` or at the
    temporary name (``<path>.tmp``)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)  # removes a planted symlink itself, not its target
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
