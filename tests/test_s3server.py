"""The S3 server fixture (tests/s3server.py): a real S3 API on 127.0.0.1, create-if-absent, and outages."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.s3server import S3Server, running_s3_server


@pytest.fixture
def s3() -> Iterator[S3Server]:
    with running_s3_server() as server:
        yield server


def _fails_fast(call: object) -> BaseException:
    """The call fails (and returns: it does not hang; how fast is the settings' business, not a timed assertion on
    a busy machine)."""
    with pytest.raises(Exception) as info:
        call()  # type: ignore[operator]
    assert not isinstance(info.value, FileNotFoundError | FileExistsError), info.value  # an outage, not an answer
    return info.value


_CHILD = """
import fsspec
fs = fsspec.filesystem("s3")  # no storage_options: the environment alone points it at the server
try:
    fs.pipe_file("bucket/a", b"child", mode="create")
except FileExistsError:
    print("exists")
with fs.open("bucket/b", "xb") as f:
    f.write(b"child")
print(fs.cat_file("bucket/b").decode())
"""


def test_create_if_absent_is_refused_the_second_time(s3: S3Server) -> None:
    fs = s3.filesystem()
    fs.pipe_file("bucket/a", b"first", mode="create")
    with pytest.raises(FileExistsError):  # a conditional PUT (If-None-Match: *), refused by the server
        fs.pipe_file("bucket/a", b"second", mode="create")
    f = fs.open("bucket/a", "xb")  # s3fs checks nothing at open: the refusal comes with the upload, at close
    f.write(b"third")
    with pytest.raises(FileExistsError):
        f.close()
    assert fs.cat_file("bucket/a") == b"first"
    # A child process configured by the environment only sees the same server and the same refusal.
    out = subprocess.run([sys.executable, "-c", _CHILD], env=s3.child_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["exists", "child"]
    assert fs.cat_file("bucket/a") == b"first"


def test_pause_hangs_the_server_calls_fail_fast_and_resume_brings_the_data_back(s3: S3Server) -> None:
    fs = s3.filesystem()
    fs.pipe_file("bucket/a", b"kept")
    s3.pause()
    try:
        _fails_fast(lambda: fs.cat_file("bucket/a"))
        _fails_fast(lambda: fs.pipe_file("bucket/b", b"x", mode="create"))  # no Expect: 100-continue, so no hang
    finally:
        s3.resume()
    assert fs.cat_file("bucket/a") == b"kept"


def test_down_refuses_and_keeps_the_data_stop_loses_it(s3: S3Server) -> None:
    fs = s3.filesystem()
    fs.pipe_file("bucket/a", b"kept")
    url = s3.url
    s3.down()
    _fails_fast(lambda: fs.cat_file("bucket/a"))  # a pooled keep-alive connection was dropped too
    _fails_fast(lambda: fs.pipe_file("bucket/b", b"x", mode="create"))
    s3.up()
    assert fs.cat_file("bucket/a") == b"kept"
    s3.stop()
    _fails_fast(lambda: fs.cat_file("bucket/a"))
    s3.start()
    assert s3.url == url  # the same endpoint, a new empty server
    with pytest.raises(FileNotFoundError):
        fs.cat_file("bucket/a")
