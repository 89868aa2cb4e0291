"""Refuse a CA directory, or a file in it, that someone else could have written.

Whoever can write ``--ca-dir`` can plant ``issuer-key.pem`` (and mint tokens for any identity)
or a whole CA bundle (and issue certificates the mesh trusts).  A directory another local user
pre-created (say under ``/tmp``) is exactly that.  So, like ``ssh`` with ``~/.ssh``:

* the directory and every file read from it must be owned by the server's effective user;
* none may be writable by group or others;
* private keys must not be accessible to group or others at all (mode 0600 or stricter);
* the directory and the files are opened with ``O_NOFOLLOW`` and checked on the opened
  descriptor (``fstat``), so a symbolic link is refused rather than followed and the check
  is about the very file that is read, not one swapped in between.

Group/other *read* is allowed on the directory and on certificates: they are public.
A Kubernetes Secret mounted as the directory (symlinks, root-owned, 0644 keys) is therefore
refused; copy its files into a directory of the server's own (deploy/deployment.yaml does).
Each failure is a ``CaMaterialError`` naming the path and the problem.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from istiod_lite.ca.errors import CaMaterialError

_GROUP_OTHER_WRITE = stat.S_IWGRP | stat.S_IWOTH
_GROUP_OTHER_ANY = stat.S_IRWXG | stat.S_IRWXO


def _check(path: Path, st: os.stat_result, what: str, *, private: bool) -> None:
    mode = stat.S_IMODE(st.st_mode)
    euid = os.geteuid()
    if st.st_uid != euid:
        raise CaMaterialError(f"{what} {path} is owned by uid {st.st_uid}, not by this server's user "
                              f"(uid {euid}); refusing key material someone else may have written")
    if private and mode & _GROUP_OTHER_ANY:
        raise CaMaterialError(f"{what} {path} has mode {mode:#o}: a private key must be 0600 (not accessible "
                              f"to group or others); fix with chmod 600 {path}")
    if mode & _GROUP_OTHER_WRITE:
        raise CaMaterialError(f"{what} {path} has mode {mode:#o}: writable by group or others, who could "
                              f"plant key material; fix with chmod go-w {path}")


def _symlink_error(path: Path, what: str) -> CaMaterialError:
    return CaMaterialError(f"{what} {path} is a symbolic link; refusing to follow it (use a real "
                           "directory and real files)")


def check_directory(path: Path) -> None:
    """``path`` must be a real directory (not a symlink), ours, not writable by group or others."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR) and path.is_symlink():
            raise _symlink_error(path, "CA directory") from None
        raise CaMaterialError(f"CA directory {path}: {exc.strerror}") from exc
    try:
        _check(path, os.fstat(fd), "CA directory", private=False)
    finally:
        os.close(fd)


def exists(path: Path) -> bool:
    """Whether anything, a dangling symlink included, is at ``path`` (then ``read`` refuses it)."""
    return os.path.lexists(path)


def read(path: Path, *, private: bool) -> bytes:
    """The content of the regular file ``path``, after the owner and mode checks (``private``: a key)."""
    what = "private key" if private else "file"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _symlink_error(path, what) from None
        raise CaMaterialError(f"{what} {path}: {exc.strerror}") from exc
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CaMaterialError(f"{what} {path} is not a regular file")
        _check(path, st, what, private=private)
        return f.read()


def open_lock(path: Path) -> int:
    """Open (creating, 0600) the lock file without following a symlink; returns the descriptor."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _symlink_error(path, "lock file") from None
        raise CaMaterialError(f"lock file {path}: {exc.strerror}") from exc
    try:
        _check(path, os.fstat(fd), "lock file", private=False)
    except CaMaterialError:
        os.close(fd)
        raise
    return fd
