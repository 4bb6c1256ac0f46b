"""Where a home keeps its objects: a directory, or a URL through fsspec.

A home only ever *creates* objects — never renames, appends to or overwrites one — so one code path fits a
shared filesystem and an object store.  :meth:`Store.create` writes an object only if no object of that name
exists (create-if-absent), atomically: a reader sees no object or the whole one.  On a directory that is a
hard link of a complete, synced temp file (``link`` fails with ``EEXIST`` where the name exists, on NFS too);
on S3 it is a conditional put (``If-None-Match: *``, through s3fs's ``open(path, "xb")``).  Stores whose
create-if-absent is not known to be atomic are flagged (:attr:`Store.exclusive` is false) and warned about.
See spec/home.md.
"""

from __future__ import annotations

import errno
import os
import shutil
import threading
import uuid
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import HomeError

__all__ = ["DirStore", "FsspecStore", "Store", "open_store"]

# fsspec protocols whose open(path, "xb") is an atomic create-if-absent (s3fs: a conditional put; memory: a lock).
_EXCLUSIVE = {"s3", "s3a", "memory"}


class Store:
    """The objects of one home (keys are ``/``-separated paths relative to its root)."""

    url: str
    exclusive: bool = True
    """Whether :meth:`create` is an atomic create-if-absent (the fence between two writers relies on it)."""

    def create(self, key: str, data: bytes) -> bool:
        """Write ``data`` as object ``key`` if no such object exists: ``True`` when this call made it, ``False``
        when it existed already.  Raises ``OSError`` (or the store's own error) when the store cannot be reached."""
        raise NotImplementedError

    def get(self, key: str) -> bytes:
        """The object's bytes (``FileNotFoundError`` when there is none)."""
        raise NotImplementedError

    def exists(self, key: str) -> bool:
        raise NotImplementedError

    def list(self, prefix: str) -> list[str]:
        """The keys of the objects directly under folder ``prefix`` (names only, sorted; none when it is absent)."""
        raise NotImplementedError

    def fetch(self, key: str, dest: Path) -> None:
        """Copy object ``key`` to the local file ``dest`` (which the caller then checks and moves into place)."""
        dest.write_bytes(self.get(key))

    def upload(self, key: str, src: Path) -> bool:
        """:meth:`create` ``key`` from the local file ``src``."""
        return self.create(key, src.read_bytes())


class DirStore(Store):
    """A home on a directory (local, or a shared filesystem: NFS, Lustre, GPFS, a mounted volume)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.url = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / key

    def create(self, key: str, data: bytes) -> bool:
        return self._publish(key, lambda out: out.write(data), lambda: data)

    def upload(self, key: str, src: Path) -> bool:
        """:meth:`create` from a local file, streamed (a checkpoint of gigabytes is never held in memory)."""
        def copy(out: BinaryIO) -> None:
            with open(src, "rb") as f:
                shutil.copyfileobj(f, out, 1 << 22)
        return self._publish(key, copy, src.read_bytes)

    def _publish(self, key: str, write: Callable[[BinaryIO], Any], data: Callable[[], bytes]) -> bool:
        """Create object ``key`` if absent: ``write`` fills a temp file beside it, synced, then a hard link gives it
        its name (``EEXIST`` where the name is taken); ``data()`` for a filesystem without hard links."""
        target = self._path(key)
        if target.exists():
            return False
        folder = target.parent
        if not folder.is_dir():
            folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{target.name}.{uuid.uuid4().hex}.tmp"
        try:
            with open(tmp, "xb") as out:
                write(out)
                out.flush()
                os.fsync(out.fileno())
            try:
                os.link(tmp, target)  # atomic create-if-absent of a complete file
            except FileExistsError:
                return False
            except OSError as e:
                if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                    raise
                return self._create_without_links(target, data())
        finally:
            try:
                tmp.unlink()
            except FileNotFoundError:
                pass
        _fsync_dir(folder)
        return True

    def _create_without_links(self, target: Path, data: bytes) -> bool:
        """A filesystem without hard links: ``O_EXCL`` (still exclusive; a crash may leave a short file, which
        readers detect: every object states its own length or hash)."""
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        _fsync_dir(target.parent)
        return True

    def get(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def list(self, prefix: str) -> list[str]:
        try:
            return sorted(n for n in os.listdir(self._path(prefix)) if not n.startswith("."))
        except (FileNotFoundError, NotADirectoryError):
            return []


class FsspecStore(Store):
    """A home at a URL through fsspec (``s3://bucket/prefix``, ``gs://``, ``az://``, ``memory://``...).

    S3 endpoints and credentials come as s3fs users give them: ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
    ``AWS_SECRET_ACCESS_KEY`` in the environment, or ``storage_options``."""

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None) -> None:
        try:
            import fsspec
        except ImportError:
            raise HomeError(f"the home {url} is a URL, which needs fsspec: pip install \"fsmtrain[cloud]\" "
                            "(s3fs for s3://; gcsfs or adlfs for gs:// or az://)") from None
        options = dict(storage_options or {})
        protocol = url.split("://", 1)[0].lower()
        if protocol in ("s3", "s3a"):
            options.setdefault("use_listings_cache", False)  # (another machine's objects must show at once)
            options.setdefault("skip_instance_cache", True)
            endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3")
            if endpoint and "endpoint_url" not in options and "client_kwargs" not in options:
                options["endpoint_url"] = endpoint  # (older s3fs/botocore ignore the variable)
        try:
            self.fs, root = fsspec.core.url_to_fs(url, **options)
        except ImportError as e:
            raise HomeError(f"the home {url} needs a package that is not installed ({e}); for s3:// pip install "
                            "\"fsmtrain[cloud]\"") from None
        except (ValueError, TypeError) as e:
            raise HomeError(f"the home {url} is not a URL fsspec can open: {e}") from None
        self.root = root.rstrip("/")
        self.url = url
        self.protocol = protocol
        self.exclusive = protocol in _EXCLUSIVE and _creates(self.fs)
        if protocol in ("s3", "s3a"):
            _no_expect_header(self.fs)

    def _path(self, key: str) -> str:
        return f"{self.root}/{key}"

    def create(self, key: str, data: bytes) -> bool:
        try:
            if self.protocol == "memory":
                with _MEMORY:  # (memory's "create" checks, then writes: one process, so a lock makes it atomic)
                    self.fs.pipe_file(self._path(key), data, mode="create")
            elif self.exclusive:
                self.fs.pipe_file(self._path(key), data, mode="create")  # (S3: a put with If-None-Match: *)
            else:  # (not known to be atomic: see the warning open_store gives)
                if self.fs.exists(self._path(key)):
                    return False
                with self.fs.open(self._path(key), "wb") as f:
                    f.write(data)
        except FileExistsError:
            return False
        except OSError as e:
            if _precondition_failed(e):
                return False
            raise
        except Exception as e:
            if _precondition_failed(e):
                return False
            raise
        return True

    def upload(self, key: str, src: Path) -> bool:
        """:meth:`create` from a local file, streamed by fsspec (multipart on S3, with the same condition)."""
        if not self.exclusive:
            return self.create(key, src.read_bytes())
        try:
            self.fs.put_file(str(src), self._path(key), mode="create")
        except FileExistsError:
            return False
        except Exception as e:
            if _precondition_failed(e):
                return False
            raise
        return True

    def get(self, key: str) -> bytes:
        data = self.fs.cat_file(self._path(key))
        return bytes(data)

    def exists(self, key: str) -> bool:
        return bool(self.fs.exists(self._path(key)))

    def list(self, prefix: str) -> list[str]:
        path = self._path(prefix).rstrip("/")
        try:
            self.fs.invalidate_cache(path)
        except Exception:
            pass
        try:
            names = self.fs.ls(path, detail=False)
        except FileNotFoundError:
            return []
        out = []
        for n in names:
            name = str(n).rstrip("/").rsplit("/", 1)[-1]
            if name and not name.startswith("."):
                out.append(name)
        return sorted(out)


def _creates(fs: Any) -> bool:
    """Whether this fsspec filesystem's ``pipe_file`` takes ``mode="create"`` (s3fs >= 2025: a conditional put)."""
    import inspect

    for f in (getattr(type(fs), "_pipe_file", None), getattr(type(fs), "pipe_file", None)):
        try:
            if f is not None and "mode" in inspect.signature(f).parameters:
                return True
        except (TypeError, ValueError):
            pass
    return False


def _no_expect_header(fs: Any) -> None:
    """botocore sends ``Expect: 100-continue`` with a PUT, and aiohttp starts no read timeout while it waits for
    the answer: a PUT to a server that hangs would hang the shipper for ever.  Drop it (best effort)."""
    try:
        import botocore.handlers

        fs.connect()
        fs.s3.meta.events.unregister("before-call.s3", botocore.handlers.add_expect_header)
    except Exception:
        pass


def _precondition_failed(e: BaseException) -> bool:
    text = f"{type(e).__name__} {e}"
    return "PreconditionFailed" in text or "412" in text and "Precondition" in text


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_WARNED: set[str] = set()
_MEMORY = threading.Lock()


def open_store(home: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None) -> Store:
    """The store of ``home``: a directory path (or ``file://`` URL), or another fsspec URL."""
    text = os.fspath(home)
    if not text or not text.strip():
        raise HomeError("the home is empty: give a directory or a URL such as s3://bucket/prefix")
    if "://" in text:
        protocol = text.split("://", 1)[0].lower()
        if protocol in ("file", "local"):
            return DirStore(text.split("://", 1)[1])
        store: Store = FsspecStore(text, storage_options)
        if not store.exclusive and text not in _WARNED:
            _WARNED.add(text)
            warnings.warn(f"the home {text} is on a store ({protocol}://) that fsmtrain does not know to create "
                          "objects only if absent: two machines resuming the same run from it might both proceed. "
                          "Use a directory or s3:// for a home that fences writers (spec/home.md)", stacklevel=3)
        return store
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise HomeError(f"the home {path} exists and is not a directory")
    return DirStore(path)
