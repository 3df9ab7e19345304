# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""Atomic saves: the adapter is written into a folder next to the target and switched in at once, so a crash or a
full disk never leaves a half-written adapter."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Callable, Iterable
from typing import Any, Optional

from .names import CONFIG_NAME

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


class ExchangeUnsupported(OSError):
    """The platform or file system cannot swap two directories atomically."""


def _renameat2() -> Optional[Callable[..., int]]:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        function = libc.renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


def exchange_directories(first: str, second: str) -> None:
    """Swap two directory entries in one atomic step (Linux `renameat2(RENAME_EXCHANGE)`)."""
    function = _renameat2()
    if function is None:
        raise ExchangeUnsupported(errno.ENOSYS, "renameat2 is not available on this platform")
    if function(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) != 0:
        code = ctypes.get_errno()
        if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
            raise ExchangeUnsupported(code, f"this file system cannot exchange directories: {os.strerror(code)}")
        raise OSError(code, os.strerror(code), first, None, second)


def _fsync_tree(root: str, files: bool = True) -> None:
    for folder, _, names in os.walk(root):
        for name in names if files else ():
            path = os.path.join(folder, name)
            if os.path.islink(path):
                continue
            with open(path, "rb") as file:
                os.fsync(file.fileno())
        _fsync_dir(folder)


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot fsync directories
    finally:
        os.close(fd)


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _merge_untouched(old: str, new: str) -> None:
    """Give `new` every entry of `old` that the save did not write (hard links, no data copied), recursively."""
    for entry in os.scandir(old):
        target = os.path.join(new, entry.name)
        if entry.is_dir(follow_symlinks=False):
            if not os.path.lexists(target):
                shutil.copytree(entry.path, target, symlinks=True, copy_function=_link_or_copy)
            elif os.path.isdir(target) and not os.path.islink(target):
                _merge_untouched(entry.path, target)
        elif not os.path.lexists(target):
            if entry.is_symlink():
                os.symlink(os.readlink(entry.path), target)
            else:
                _link_or_copy(entry.path, target)


def atomic_save(save_directory: str | os.PathLike, write: Callable[[str], Any], keep: Iterable[str] = ()) -> Any:
    """Run `write(folder)` on a temporary folder next to `save_directory`, then switch it in atomically.

    - If `write` fails or is interrupted, `save_directory` is untouched (the temporary folder is removed; after a
      hard crash it stays behind as `.<name>.gated-vpt-save-*`, which no loader reads).
    - Entries of the old folder that `write` did not produce are kept (hard-linked into the new folder), so saving
      into a folder with other files (a Trainer checkpoint, other adapters) loses nothing. The files named in `keep`
      are copied in *before* `write` runs (e.g. README.md, which PEFT updates rather than replaces).
    - The switch (`_switch_folder`): on Linux one `renameat2(RENAME_EXCHANGE)`: a reader, or a crash at any moment,
      sees the complete old folder or the complete new one. Elsewhere (or on a file system without it) two renames:
      the old folder moves to `.<name>.gated-vpt-old-*`, the new one takes its place, and if that fails the old
      folder is moved back; a crash between the two leaves the complete old folder under that backup name.
    - A folder that cannot be replaced as a whole (it is the current working directory or contains it, it is a
      mount point, or its parent is not writable) gets the new files one by one instead (`_replace_files`): each file
      is complete at every moment and an exception restores the old ones, but a hard crash between two renames can
      leave new weights next to the old config.
    """
    target = os.path.realpath(os.fspath(save_directory))
    parent, name = os.path.split(target)
    os.makedirs(parent, exist_ok=True)
    existed = os.path.isdir(target)
    whole_folder = not (existed and _contains_cwd(target))
    try:
        staging = tempfile.mkdtemp(prefix=f".{name}.gated-vpt-save-", dir=parent if whole_folder else target)
    except OSError:
        if not existed:
            raise
        staging, whole_folder = tempfile.mkdtemp(prefix=".gated-vpt-save-", dir=target), False  # parent read-only
    try:
        os.chmod(staging, _directory_mode(target if existed else None, staging))
        for entry in keep:
            source = os.path.join(target, entry)
            if existed and os.path.isfile(source):
                shutil.copy2(source, os.path.join(staging, entry))
        result = write(staging)
        written = _files_under(staging)
        _fsync_tree(staging)
        if not existed:
            os.rename(staging, target)  # atomic; fails if the folder appeared meanwhile
        elif not (whole_folder and _switch_folder(staging, target)):
            _replace_files(staging, target, written)
        _fsync_dir(parent)
        return result
    finally:
        # Before the switch `staging` holds the unfinished new save; after it, the old folder (or nothing).
        shutil.rmtree(staging, ignore_errors=True)


# errno values of a rename that cannot move this folder at all (nothing was changed): fall back to file by file.
_CANNOT_MOVE = (errno.EBUSY, errno.EXDEV, errno.EACCES, errno.EPERM, errno.EROFS)


def _switch_folder(staging: str, target: str) -> bool:
    """Replace `target` by `staging` as a whole (after giving `staging` the entries the save did not write).
    False if the folder cannot be moved (then nothing was changed)."""
    _merge_untouched(target, staging)
    _fsync_tree(staging, files=False)  # the new directory entries (the files' data was synced before)
    try:
        exchange_directories(staging, target)
        return True
    except ExchangeUnsupported:
        pass
    except OSError as error:
        if error.errno in _CANNOT_MOVE:
            return False
        raise
    parent, name = os.path.split(target)
    backup = tempfile.mkdtemp(prefix=f".{name}.gated-vpt-old-", dir=parent)
    os.rmdir(backup)
    try:
        os.rename(target, backup)
    except OSError as error:
        if error.errno in _CANNOT_MOVE:
            return False
        raise
    try:
        os.rename(staging, target)
    except BaseException:
        os.rename(backup, target)
        raise
    os.rename(backup, staging)  # removed with the staging folder by the caller
    return True


def _replace_files(staging: str, target: str, written: list[str]) -> None:
    """Move the files the save wrote into `target` one by one (weights first, then configs, then the rest), each with
    an atomic `os.replace`; on any exception put back the files already replaced."""

    def order(relative: str) -> tuple[int, str]:
        base = os.path.basename(relative)
        return (0 if base.endswith(".safetensors") else 1 if base == CONFIG_NAME else 2, relative)

    backup = tempfile.mkdtemp(prefix=".gated-vpt-old-", dir=staging)
    replaced: list[tuple[str, bool]] = []
    try:
        for relative in sorted(written, key=order):
            destination = os.path.join(target, relative)
            os.makedirs(os.path.dirname(destination), exist_ok=True)
            had_old = os.path.isfile(destination)
            if had_old:
                kept = os.path.join(backup, relative)
                os.makedirs(os.path.dirname(kept), exist_ok=True)
                _link_or_copy(destination, kept)
            os.replace(os.path.join(staging, relative), destination)
            replaced.append((relative, had_old))
    except BaseException:
        for relative, had_old in reversed(replaced):
            destination = os.path.join(target, relative)
            if had_old:
                os.replace(os.path.join(backup, relative), destination)
            else:
                os.remove(destination)
        raise


def _files_under(root: str) -> list[str]:
    return [os.path.relpath(os.path.join(folder, name), root) for folder, _, files in os.walk(root) for name in files]


def _contains_cwd(folder: str) -> bool:
    """Whether the current working directory is `folder` or inside it (swapping the folder would strand it)."""
    try:
        cwd = os.path.realpath(os.getcwd())
    except OSError:
        return False
    return cwd == folder or cwd.startswith(folder + os.sep)


def _directory_mode(existing: Optional[str], scratch: str) -> int:
    """The permission bits the new folder gets: the old folder's, or those of a fresh `mkdir` (umask applied;
    `mkdtemp` itself makes 0o700 folders). Probed with a real mkdir because reading the umask is not thread-safe."""
    if existing is not None:
        return stat.S_IMODE(os.stat(existing).st_mode)
    probe = os.path.join(scratch, ".mode-probe")
    os.mkdir(probe)
    try:
        return stat.S_IMODE(os.stat(probe).st_mode)
    finally:
        os.rmdir(probe)
