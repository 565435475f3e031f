"""An S3 server from moto on loopback for the team-cache tests (a fresh bucket per test), the requests it
answered, from its access log, and a way to change an entry under its seal, as someone tampering would."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import socket
import uuid

import pytest
from moto.server import ThreadedMotoServer  # (moto and s3fs: in the test extra, so these never skip)

from nbcache.remote import Remote
from nbcache.teamentry import read_record

__all__ = ["REQUESTS", "Requests", "aws_env", "bucket", "change_sealed", "endpoint"]


def change_sealed(fs, path: str) -> None:
    """Change a field under the seal of the entry object at ``path`` (its values and the rest left as they are)."""
    data = fs.cat_file(path)
    record = read_record(data, len(data))
    entry = json.loads(record.entry)
    entry["duration_s"] += 1.0
    values = data[:sum(size for _, size in record.inline)]
    fs.pipe_file(path, values + dataclasses.replace(record, entry=json.dumps(entry)).record())


class Requests(logging.Handler):
    """The requests the S3 server answered, as ``METHOD /path``, from its (werkzeug) access log."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        match = re.search(r'"(?:\x1b\[[0-9;]*m)*([A-Z]+ \S+)', record.getMessage())
        if match:
            self.seen.append(match.group(1))

    def of(self, bucket: str) -> list[str]:
        return [r for r in self.seen if r.split(" ", 1)[1].startswith((f"/{bucket}/", f"/{bucket}?"))]


REQUESTS = Requests()


@pytest.fixture(scope="module")
def endpoint():
    log = logging.getLogger("werkzeug")
    log.addHandler(REQUESTS)
    log.setLevel(logging.INFO)
    with socket.socket() as probe:  # (a free port: moto 5.0 cannot say which one port=0 took)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()
    log.removeHandler(REQUESTS)


@pytest.fixture
def bucket(endpoint, monkeypatch):
    for name, value in aws_env(endpoint).items():
        monkeypatch.setenv(name, value)
    name = f"team-{uuid.uuid4().hex[:12]}"
    Remote(f"s3://{name}").fs.mkdir(name)
    return name


def aws_env(endpoint: str) -> dict[str, str]:
    return {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint}
