"""Local disk behind the storage interface (plain paths and file:// URIs).

Every `OSError` is translated here, so no caller catches one: a path the system cannot use at
all (too long, invalid, a symlink loop) is the caller's mistake (`InvalidStorageUri`, 422);
anything else the disk says (permissions, space, I/O) is a `StorageError` (502).

Only regular files are read (a FIFO would block the reader forever, a device never end), and
`read_checked` / `write_within` confine a read or a write at the moment it happens, on the
descriptors the kernel hands out, because a path checked earlier can be a symlink by the time
it is used: see `_read_file` and `_open_folder`.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import random
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ParamSpec, TypeVar

from shared.errors import (
    InvalidStorageUri,
    NotAFile,
    ObjectNotFound,
    OutsideFolder,
    PayloadTooLarge,
    StorageError,
)
from shared.storage.base import ReadCheck, relative_parts

P = ParamSpec("P")
R = TypeVar("R")
_BAD_PATH = frozenset({errno.ENAMETOOLONG, errno.EINVAL, errno.ELOOP})


def _translated(fn: Callable[P, R]) -> Callable[P, R]:
    """Run a storage operation with its `OSError`s turned into maskfleet errors."""
    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise ObjectNotFound(f"no object at {_name(exc)}") from exc
        except OSError as exc:
            if exc.errno in _BAD_PATH:
                raise InvalidStorageUri(f"unusable local path {_name(exc)}: "
                                        f"{os.strerror(exc.errno or 0)}") from exc
            raise StorageError(f"local storage failed on {_name(exc)}: "
                               f"{exc.strerror or exc}") from exc
        except ValueError as exc:  # e.g. an embedded NUL byte
            raise InvalidStorageUri(f"unusable local path: {exc}") from exc
    return wrapper


def _name(exc: OSError) -> str:
    return repr(str(exc.filename)[:200]) if exc.filename is not None else "a path"

_SCHEME = "file://"


@_translated
def _next_path(paths: Iterator[Path]) -> Path | None:
    """One step of a listing, its `OSError`s translated like every other operation's."""
    return next(paths, None)


@_translated
def _is_dir(path: Path) -> bool:
    return path.is_dir()


@_translated
def _is_file(path: Path) -> bool:
    return path.is_file()


class LocalStorage:
    """Writes are atomic (temp file + rename), so readers never see half an object."""

    @staticmethod
    def _path(uri: str) -> Path:
        return Path(uri.removeprefix(_SCHEME))

    @_translated
    def read(self, uri: str) -> bytes:
        return _read_file(self._path(uri))

    @_translated
    def read_checked(self, uri: str, max_bytes: int, check: ReadCheck | None = None) -> bytes:
        return _read_file(self._path(uri), max_bytes, check)

    @_translated
    def write_within(self, root: str, uri: str, data: bytes,
                     content_type: str | None = None) -> None:
        """Written through descriptors from `root` down, never through a symlink.

        `root` must be the folder's real path (as `os.path.realpath` gives it); each folder
        below it is made if missing and opened without following links, and the file is
        created and renamed inside the last one, so swapping any of them for a symlink
        (`ELOOP`/`ENOTDIR`) refuses the write (`OutsideFolder`) instead of following it.
        """
        root = root.removeprefix(_SCHEME).rstrip("/") or "/"
        if not root.startswith("/"):
            raise InvalidStorageUri(f"the folder {root[:200]!r} to write in is not absolute")
        *folders, name = relative_parts(root, uri.removeprefix(_SCHEME))
        fd = _open_folder(root)
        try:
            where = root
            for part in folders:
                where = f"{where}/{part}"
                child = _open_child(fd, part, where)
                os.close(fd)
                fd = child
            _write_at(fd, name, data, f"{where}/{name}")
        finally:
            os.close(fd)

    @_translated
    def write(self, uri: str, data: bytes, content_type: str | None = None) -> None:
        path = self._path(uri)
        try:
            try:
                fd, tmp = _create_hidden(path)
            except FileNotFoundError:  # the folder is new: make it (once, not on every write)
                path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = _create_hidden(path)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            # nothing is missing: the place to write is occupied by a file (or vanished)
            raise StorageError(f"cannot write {uri[:200]}: {exc.strerror}") from exc
        try:
            _write_all(fd, data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @_translated
    def exists(self, uri: str) -> bool:
        return self._path(uri).is_file()

    def list(self, prefix: str) -> list[str]:
        return sorted(self.walk(prefix))

    def walk(self, prefix: str) -> Iterator[str]:
        """Object-store semantics, as on GCS: every file whose URI starts with `prefix`.

        URIs come back spelled like `prefix` (`./var/x/...` stays `./var/x/...`), so callers
        can strip the prefix they passed; hidden files (in-flight atomic writes) are skipped.
        """
        scheme = _SCHEME if prefix.startswith(_SCHEME) else ""
        raw = prefix.removeprefix(_SCHEME)
        head, sep, stem = raw.rpartition("/")
        base_text = head + sep
        base = Path(base_text or ".")
        if not _is_dir(base):
            return
        paths = base.rglob("*")
        while (path := _next_path(paths)) is not None:
            relative = path.relative_to(base).as_posix()
            if relative.startswith(stem) and not path.name.startswith(".") and _is_file(path):
                yield f"{scheme}{base_text}{relative}"

    @_translated
    def delete(self, uri: str) -> None:
        path = self._path(uri)
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)

    @_translated
    def download_tree(self, prefix: str, dest: Path) -> Path:
        src = self._path(prefix)
        if not src.is_dir():
            raise ObjectNotFound(f"no folder at {prefix}")
        shutil.copytree(src, dest, dirs_exist_ok=True)
        return dest


# A write and a read are a handful of system calls, and each one lets go of the GIL: in the
# batch worker, where the I/O threads and the model's thread all want it back, every call is a
# hand-off between threads (futex wake-ups, context switches). Measured in a 512-image int8
# job with eight I/O threads, a mask write cost 0.65 ms of CPU. So the calls are the fewest that
# do the job: no mkdir, fstat or buffered file object per write (mkstemp + fdopen + mkdir
# made seven), no position queries per read (`Path.read_bytes` makes seven). Confinement adds
# the fewest that hold against a symlink swapped in meanwhile: one `readlink` of the opened
# descriptor per checked read; per confined write, the output folder's open, `readlink` and
# close, and an open and close per folder below it (docs/security.md).

_TEMP_NAMES = random.Random()  # seeded from os.urandom; O_EXCL, not the name, makes it safe


def _write_all(fd: int, data: bytes) -> None:
    """All of `data` into `fd` (a write may take less than it is given), then close it."""
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def _create_hidden(path: Path) -> tuple[int, str]:
    """A new private file beside `path`, hidden (listings skip it) as mkstemp's would be."""
    for _ in range(100):
        tmp = os.path.join(path.parent, f".{path.name}.{_TEMP_NAMES.getrandbits(48):012x}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            continue
        return fd, tmp
    raise FileExistsError(errno.EEXIST, "no unused temporary name", str(path.parent))


_READ = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC
"""O_NONBLOCK: opening a FIFO for reading returns at once instead of waiting for a writer
(then `fstat` refuses it); on a regular file it changes nothing."""
_FOLDER = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_FOLDER_HERE = _FOLDER | os.O_NOFOLLOW


def _read_file(path: Path, max_bytes: int | None = None, check: ReadCheck | None = None,
               ) -> bytes:
    """The whole file: open, (where it really is,) size, one read of it, the read that sees
    its end, close. `check` sees the path of the file actually opened, read back from the
    descriptor (one `readlink`), so no symlink or swapped folder can lead it astray; the size
    is refused before anything is read, and the reads stop one byte past `max_bytes` even if
    the file grows meanwhile."""
    fd = os.open(path, _READ)
    try:
        if check is not None:
            check(os.readlink(f"/proc/self/fd/{fd}"))
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            if stat.S_ISDIR(info.st_mode):
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
            raise NotAFile(f"{str(path)[:200]!r} is not a regular file (a FIFO, device or "
                           "socket); not read")
        limit = max_bytes + 1 if max_bytes is not None else None
        if limit is not None and info.st_size >= limit:
            raise PayloadTooLarge(f"{info.st_size} bytes is more than the {max_bytes} allowed")
        parts: list[bytes] = []
        got = 0
        want = info.st_size + 1
        while chunk := os.read(fd, want):
            parts.append(chunk)
            got += len(chunk)
            if limit is not None and got >= limit:
                raise PayloadTooLarge(f"more than the {max_bytes} bytes allowed (the file grew "
                                      "while it was read)")
            want = 1 << 20 if limit is None else min(1 << 20, limit - got)
        return parts[0] if len(parts) == 1 else b"".join(parts)
    finally:
        os.close(fd)


def _open_folder(root: str) -> int:
    """A descriptor of the folder `root` (an absolute real path), made if missing.

    The path the kernel opened must still be `root`: if a folder on the way was swapped for a
    symlink (or moved) since `root` was resolved, the write is refused. A missing folder is
    made below its parent's descriptor, after the same check of the parent."""
    try:
        fd = os.open(root, _FOLDER)
    except FileNotFoundError:
        parent, name = os.path.split(root)
        if not name:
            raise
        above = _open_folder(parent)
        try:
            return _open_child(above, name, root)
        finally:
            os.close(above)
    if os.readlink(f"/proc/self/fd/{fd}") != root:
        os.close(fd)
        raise OutsideFolder(f"{root[:300]!r} is no longer that folder (replaced by a symlink, "
                            "or moved); not written")
    return fd


def _open_child(parent: int, name: str, where: str) -> int:
    """The folder `name` inside the folder open as `parent`, made if missing; never a link.

    A folder that keeps vanishing between being made and being opened is being swapped by
    someone racing the write: after a few tries that refuses the write like a link does."""
    for _ in range(3):
        try:
            return os.open(name, _FOLDER_HERE, dir_fd=parent)
        except FileNotFoundError:
            with contextlib.suppress(FileExistsError):  # made meanwhile by another writer
                os.mkdir(name, 0o777, dir_fd=parent)
            continue
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            try:
                mode = os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode
            except FileNotFoundError:
                continue
            if stat.S_ISLNK(mode):
                raise OutsideFolder(f"{where[:300]!r} is a symlink; not written through"
                                    ) from None
            raise StorageError(f"cannot write in {where[:300]!r}: a file is where a folder "
                               "should be") from None
    raise OutsideFolder(f"{where[:300]!r} kept being removed or replaced while it was written "
                        "in; not written")


def _write_at(folder: int, name: str, data: bytes, where: str) -> None:
    """`name` in the folder open as `folder`: a hidden temp file there, renamed over it. The
    folder removed meanwhile (only a race against the write does that) refuses the write."""
    for _ in range(100):
        tmp = f".{name}.{_TEMP_NAMES.getrandbits(48):012x}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600,
                         dir_fd=folder)
        except FileExistsError:
            continue
        except FileNotFoundError:
            raise OutsideFolder(f"{where[:300]!r}: its folder was removed or replaced while "
                                "it was written; not written") from None
        break
    else:
        raise FileExistsError(errno.EEXIST, "no unused temporary name", where)
    try:
        _write_all(fd, data)
        try:
            os.replace(tmp, name, src_dir_fd=folder, dst_dir_fd=folder)
        except (IsADirectoryError, NotADirectoryError) as exc:
            raise StorageError(f"cannot write {where[:200]}: {exc.strerror}") from exc
        except FileNotFoundError:
            raise OutsideFolder(f"{where[:300]!r}: its folder was removed or replaced while "
                                "it was written; not written") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=folder)
        raise
