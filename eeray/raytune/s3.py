"""``--storage s3://bucket/prefix``: Tune's checkpoints, eeray's branch-point states and the resume check on AWS
S3 or any S3-compatible server (MinIO, Ceph RGW), and the pre-flight check that refuses storage the study could
not use before anything runs.

The storage is reached with the AWS SDK's standard environment, through pyarrow's ``S3FileSystem``:

* credentials: ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (/ ``AWS_SESSION_TOKEN``), else ``AWS_PROFILE``
  and ``~/.aws/credentials``, else an EC2 instance role;
* region: ``AWS_REGION`` or ``AWS_DEFAULT_REGION``; without either, the bucket's own region is asked once;
* endpoint: ``AWS_ENDPOINT_URL_S3``, else ``AWS_ENDPOINT_URL`` (e.g. ``http://minio.lan:9000``), the AWS SDK's
  precedence. pyarrow 25 honours these only in ``FileSystem.from_uri``, not in ``S3FileSystem()`` (checked
  against a local server), so eeray reads them itself and passes ``endpoint_override``: the endpoint is then
  part of the file system Tune pickles to every trial, and a node whose environment lacks the variable still
  writes to the same server. Path-style addressing is used with an endpoint (what MinIO and Ceph expect).

Timeouts are bounded: a connection attempt gives up after :data:`CONNECT_TIMEOUT_S` and a request is tried at
most :data:`ATTEMPTS` times, so an unreachable endpoint fails a write in seconds, not after minutes of retries.
``request_timeout`` is ignored by pyarrow on Linux, but the AWS SDK fails an attempt after 3 s without a byte (a
server that accepts and never answers: refused in 26 s, tried by hand); the pre-flight also runs in a thread
with its own deadline, :data:`PREFLIGHT_DEADLINE_S`.
"""
from __future__ import annotations

import functools
import os
import threading
import uuid
from urllib.parse import urlsplit

import pyarrow.fs as pafs

ENDPOINT_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")  # the AWS SDK's order: the S3-specific one wins
REGION_VARS = ("AWS_REGION", "AWS_DEFAULT_REGION")
CONNECT_TIMEOUT_S = 5.0
ATTEMPTS = 4  # Tune's uploads outlive a dropped connection; a dead endpoint still fails within ~20 s
PREFLIGHT_DEADLINE_S = 60.0
PROBE_PREFIX = ".eeray-storage-probe-"


class StorageError(ValueError):
    """The S3 storage cannot be used; the message names it and says what to fix."""


def is_s3(storage: str) -> bool:
    return storage.startswith("s3://")


def split(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> (``bucket``, ``a/b``)."""
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key.strip("/")


def fs_path(uri: str) -> str:
    """The path of ``uri`` on the S3 file system: ``bucket/key`` (what Tune's ``storage_path`` takes with a
    ``storage_filesystem``)."""
    bucket, key = split(uri)
    return f"{bucket}/{key}" if key else bucket


def endpoint() -> tuple[str, str] | None:
    """(variable, URL) of the endpoint the environment names; None: AWS itself."""
    for var in ENDPOINT_VARS:
        if os.environ.get(var):
            return var, os.environ[var]
    return None


def where() -> str:
    """The server, for messages: ``http://minio:9000 (AWS_ENDPOINT_URL)`` or AWS."""
    ep = endpoint()
    return f"{ep[1]} ({ep[0]})" if ep else f"AWS (neither {' nor '.join(ENDPOINT_VARS)} is set)"


def filesystem(bucket: str | None = None) -> pafs.S3FileSystem:
    """The S3 file system the environment describes (cached per process: a searcher asks for branch states at
    every step of Tune's loop)."""
    env = tuple(os.environ.get(v) for v in (*ENDPOINT_VARS, *REGION_VARS))
    return _filesystem(env, None if endpoint() or _region() else bucket)


def _region() -> str | None:
    return next((os.environ[v] for v in REGION_VARS if os.environ.get(v)), None)


@functools.lru_cache(maxsize=8)
def _filesystem(_env: tuple, bucket: str | None) -> pafs.S3FileSystem:
    kwargs: dict = {"connect_timeout": CONNECT_TIMEOUT_S,
                    "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=ATTEMPTS)}
    ep = endpoint()
    if ep:
        var, url = ep
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise StorageError(f"{var}={url!r}: expected the server's URL with its scheme, e.g. "
                               f"http://minio.lan:9000 or https://s3.ceph.example")
        kwargs.update(endpoint_override=parts.netloc + parts.path.rstrip("/"), scheme=parts.scheme)
    region = _region()
    if region is None and bucket and not ep:  # AWS without a region: the bucket says where it lives
        region = pafs.resolve_s3_region(bucket)
    if region:
        kwargs["region"] = region
    return pafs.S3FileSystem(**kwargs)


# --------------------------------------------------------------------------- pre-flight
def check(storage: str) -> None:
    """Raise :class:`StorageError` unless this process can create, read and delete an object under ``storage``
    (bucket missing, credentials refused, endpoint unreachable, ...), within :data:`PREFLIGHT_DEADLINE_S`."""
    bucket, key = split(storage)
    if not bucket:
        raise StorageError(f"--storage {storage}: no bucket named; expected s3://bucket or s3://bucket/prefix")
    outcome: list[BaseException | None] = []
    probe = threading.Thread(target=lambda: outcome.append(_probe(bucket, key)), daemon=True)
    probe.start()
    probe.join(PREFLIGHT_DEADLINE_S)
    if probe.is_alive():
        raise StorageError(f"--storage {storage}: {where()} did not answer within {PREFLIGHT_DEADLINE_S:.0f} s; "
                           f"check that the endpoint is up and reachable from this machine")
    if outcome[0] is not None:
        raise StorageError(_refusal(storage, bucket, outcome[0]))


def _probe(bucket: str, key: str) -> BaseException | None:
    """Write, read back and delete one small object under the prefix: the operations Tune and eeray need."""
    try:
        fs = filesystem(bucket)
        if fs.get_file_info(bucket).type == pafs.FileType.NotFound:
            return FileNotFoundError(f"NO_SUCH_BUCKET: bucket '{bucket}' not found")
        path = "/".join(p for p in (bucket, key, f"{PROBE_PREFIX}{uuid.uuid4().hex[:12]}") if p)
        with fs.open_output_stream(path) as f:
            f.write(b"eeray")
        with fs.open_input_stream(path) as f:
            if f.readall() != b"eeray":
                return OSError(f"the object {path} read back differs from what was written")
        fs.delete_file(path)
        return None
    except Exception as exc:  # noqa: BLE001 -- classified into a message by _refusal
        return exc


_CREDENTIALS = ("ACCESS_DENIED", "INVALID_ACCESS_KEY_ID", "SIGNATURE_DOES_NOT_MATCH", "AccessDenied",
                "InvalidAccessKeyId", "SignatureDoesNotMatch", "EXPIRED_TOKEN", "ExpiredToken", "no credentials",
                "NO_CREDENTIALS", "InvalidToken")
_UNREACHABLE = ("NETWORK_CONNECTION", "curlCode", "Could not connect", "Could not resolve", "timed out")


def _refusal(storage: str, bucket: str, exc: BaseException) -> str:
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    detail = detail.split(" (Request ID")[0]
    text = str(exc)
    if "NO_SUCH_BUCKET" in text or "NoSuchBucket" in text:
        return (f"--storage {storage}: the bucket '{bucket}' does not exist at {where()}. Create it (e.g. "
                f"`aws s3 mb s3://{bucket}`, with --endpoint-url for MinIO/Ceph) or name an existing bucket")
    if any(s in text for s in _CREDENTIALS):
        return (f"--storage {storage}: {where()} refused this driver's credentials ({detail}). Set "
                f"AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) to a key allowed to read, write and "
                f"delete objects under s3://{bucket}; credentials now come from {_credential_source()}")
    if any(s in text for s in _UNREACHABLE):
        return (f"--storage {storage}: cannot reach {where()} ({detail}). Start the server or fix the endpoint "
                f"URL ({' or '.join(ENDPOINT_VARS)}); for AWS itself leave both unset")
    return (f"--storage {storage}: a test object could not be written, read and deleted at {where()} "
            f"({type(exc).__name__}: {detail})")


def _credential_source() -> str:
    if os.environ.get("AWS_ACCESS_KEY_ID"):
        return "AWS_ACCESS_KEY_ID"
    if os.environ.get("AWS_PROFILE"):
        return f"AWS_PROFILE={os.environ['AWS_PROFILE']}"
    return "the default chain (~/.aws/credentials, an instance role)"
