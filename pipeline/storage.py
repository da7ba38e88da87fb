"""Files on any store the stages share: local folders, ``s3://`` and ``gs://``, read the same way everywhere.

===========  ===========================================================================================
where        how it is read, and configured
===========  ===========================================================================================
a path       plain files
``s3://``    boto3, configured the standard AWS way: ``AWS_ENDPOINT_URL`` (an S3-compatible endpoint:
             MinIO, Ceph, moto, ...), ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (or a profile,
             an instance role: anything boto3 finds), ``AWS_REGION``. Inside a Beam job run with
             ``--s3_*`` flags those flags win, so both ways configure ``python -m pipeline``.
``gs://``    Beam's GCS filesystem where ``apache-beam[gcp]`` is installed, else TensorFlow's built-in
             one; Google's default credentials either way (``GOOGLE_APPLICATION_CREDENTIALS``,
             ``gcloud auth application-default login``, the metadata server)
other URLs   Beam's ``FileSystems``
===========  ===========================================================================================

A store that cannot be used (no such bucket, credentials refused, endpoint unreachable) is a
:class:`StorageError`: one line naming the URL, what went wrong and the fix. :func:`read_tfrecords`
streams the records of a TFRecord shard from any of them, CRC-checked, gunzipped for ``.gz``
shards: training reads ``s3://`` that way, since TensorFlow has no S3 filesystem of its own.
No TensorFlow and no Beam at import time.
"""

from __future__ import annotations

import fnmatch
import functools
import gzip
import io
import os
import struct
import sys
import zlib
from collections.abc import Iterator
from typing import IO, Any

from vidseq.errors import VidseqError

READ_BUFFER = 1 << 20  # bytes per read from an object store (one ranged GET streams many of them)
_RETRIES = 3  # reopen an S3 object stream that broke mid-read this many times, at the offset reached


class StorageError(VidseqError, OSError):
    """A store cannot be used: no such bucket, credentials refused, endpoint unreachable."""


class RecordError(ValueError):
    """A TFRecord shard does not read: phrased as TensorFlow does (``corrupted record at N``)."""


def is_remote(path: str) -> bool:
    return "://" in path


def scheme(path: str) -> str:
    """``s3``, ``gs``, ... or ``""`` for a local path."""
    return path.split("://", 1)[0].lower() if is_remote(path) else ""


def join(base: str, *names: str) -> str:
    if not is_remote(base):
        return os.path.join(base, *names)
    return "/".join([base.rstrip("/"), *(n.strip("/") for n in names)])


def basename(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1] if is_remote(path) else os.path.basename(path)


def backend(path: str) -> str:
    """What reads ``path``: ``local``, ``s3`` (boto3), ``beam`` (Beam's FileSystems) or ``tensorflow``."""
    kind = scheme(path)
    if not kind:
        return "local"
    if kind == "s3":
        return "s3"
    if _beam_has(kind):
        return "beam"
    if kind == "gs":
        return "tensorflow"
    raise StorageError(f"no filesystem for {path}: vidseq reads local paths, s3:// and gs:// (and what Beam reads)")


# --------------------------------------------------------------------------- the operations


def read_bytes(url: str) -> bytes | None:
    """The whole file, or ``None`` if it does not exist (a missing bucket is a :class:`StorageError`)."""
    kind = backend(url)
    if kind == "local":
        if not os.path.exists(url):
            return None
        with open(url, "rb") as handle:
            return handle.read()
    if kind == "s3":
        bucket, key = split_s3(url)
        try:
            return _s3().get_object(Bucket=bucket, Key=key)["Body"].read()
        except Exception as exc:  # noqa: BLE001 - boto3/botocore errors, mapped to one line
            if _s3_code(exc) in ("NoSuchKey", "404"):
                return None
            raise s3_error(url, exc) from None
    if not exists(url):
        return None
    with open_read(url) as handle:
        return handle.read()


def _s3_head(url: str, *, missing_ok: bool = False) -> dict | None:
    """The object's ``head_object`` answer; ``None`` for a missing object with ``missing_ok`` (its bucket checked).

    Raises:
        StorageError (via :func:`s3_error`): one line naming ``url`` for any other failure.
    """
    bucket, key = split_s3(url)
    try:
        return _s3().head_object(Bucket=bucket, Key=key)
    except Exception as exc:  # noqa: BLE001 - botocore raises ClientError and connection errors alike
        if missing_ok and _s3_code(exc) in ("NoSuchKey", "404"):
            _check_bucket(url)
            return None
        raise s3_error(url, exc) from None


def exists(url: str) -> bool:
    kind = backend(url)
    if kind == "local":
        return os.path.exists(url)
    if kind == "s3":
        return _s3_head(url, missing_ok=True) is not None
    if kind == "beam":
        return _beam().exists(url)
    return _guard(url, lambda: _tf().io.gfile.exists(url))


def glob(pattern: str) -> list[str]:
    """Files matching ``pattern``, whose wildcards are in the last path component only; sorted."""
    kind = backend(pattern)
    if kind == "local":
        import glob as globbing

        return sorted(globbing.glob(pattern))
    if kind == "s3":
        bucket, key = split_s3(pattern)
        folder, _, name = key.rpartition("/")
        prefix = f"{folder}/" if folder else ""
        found = []
        try:
            pages = _s3().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, Delimiter="/")
            for page in pages:
                keys = [o["Key"] for o in page.get("Contents", [])]
                found += [k for k in keys if fnmatch.fnmatchcase(k[len(prefix) :], name)]
        except Exception as exc:  # noqa: BLE001
            raise s3_error(pattern, exc) from None
        return sorted(f"s3://{bucket}/{k}" for k in found)
    if kind == "beam":
        return sorted(m.path for m in _beam().match([pattern])[0].metadata_list)
    return sorted(_guard(pattern, lambda: _tf().io.gfile.glob(pattern)))


def size(url: str) -> int:
    kind = backend(url)
    if kind == "local":
        return os.path.getsize(url)
    if kind == "s3":
        return int(_s3_head(url)["ContentLength"])
    if kind == "beam":
        return int(_beam().match([url])[0].metadata_list[0].size_in_bytes)
    return int(_guard(url, lambda: _tf().io.gfile.stat(url).length))


def open_read(url: str) -> IO[bytes]:
    """A buffered binary stream of the file's bytes as stored (a ``.gz`` file stays compressed)."""
    kind = backend(url)
    if kind == "local":
        return open(url, "rb", buffering=READ_BUFFER)
    if kind == "s3":
        return io.BufferedReader(_S3Stream(url), buffer_size=READ_BUFFER)
    if kind == "beam":
        from apache_beam.io.filesystem import CompressionTypes

        return _beam().open(url, compression_type=CompressionTypes.UNCOMPRESSED)
    return _guard(url, lambda: _tf().io.gfile.GFile(url, "rb"))


def write_bytes(url: str, data: bytes, content_type: str = "application/octet-stream") -> None:
    """Writes a whole (small) file: a report, a picture."""
    kind = backend(url)
    if kind == "local":
        os.makedirs(os.path.dirname(os.path.abspath(url)), exist_ok=True)
        with open(url, "wb") as handle:
            handle.write(data)
    elif kind == "s3":
        bucket, key = split_s3(url)
        try:
            _s3().put_object(Bucket=bucket, Key=key, Body=data, ContentType=content_type)
        except Exception as exc:  # noqa: BLE001
            raise s3_error(url, exc) from None
    elif kind == "beam":
        with _beam().create(url, mime_type=content_type) as handle:
            handle.write(data)
    else:
        def write() -> None:
            with _tf().io.gfile.GFile(url, "wb") as handle:
                handle.write(data)

        _guard(url, write)


# --------------------------------------------------------------------------- TFRecord shards


def read_tfrecords(url: str, compressed: bool | None = None) -> Iterator[bytes]:
    """The records of one TFRecord shard on any store, each checked against its CRCs.

    Args:
        url: the shard.
        compressed: GZIP; by default, whether the name ends in ``.gz``.

    Raises:
        RecordError: ``corrupted record at B`` (a length or data CRC mismatch), ``truncated
            record at B`` (the file ends inside a record) or ``inflate() failed: ...`` (a broken
            gzip stream), ``B`` the byte (of the decompressed stream) where the record starts,
            the wording of TensorFlow's reader.
        StorageError: if the store cannot be read.
    """
    import google_crc32c

    if compressed is None:
        compressed = url.endswith(".gz")
    offset = 0
    with open_read(url) as raw:
        stream: IO[bytes] = gzip.GzipFile(fileobj=raw, mode="rb") if compressed else raw
        try:
            while True:
                header = stream.read(12)
                if not header:
                    return
                if len(header) < 12:
                    raise RecordError(f"truncated record at {offset}")
                length, length_crc = struct.unpack("<QI", header)
                if _masked(google_crc32c.value(header[:8])) != length_crc:
                    raise RecordError(f"corrupted record at {offset} (length CRC mismatch)")
                body = stream.read(length + 4)
                if len(body) < length + 4:
                    raise RecordError(f"truncated record at {offset}")
                data = body[:length]
                if _masked(google_crc32c.value(data)) != struct.unpack("<I", body[length:])[0]:
                    raise RecordError(f"corrupted record at {offset} (data CRC mismatch)")
                yield data
                offset += length + 16
        except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise RecordError(f"inflate() failed: {exc}") from None


def _masked(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# --------------------------------------------------------------------------- S3


def split_s3(url: str) -> tuple[str, str]:
    bucket, _, key = url[len("s3://"):].partition("/")
    return bucket, key


def s3_endpoint() -> str:
    """The S3 endpoint in use, for messages."""
    return _s3_settings().get("endpoint_url") or "AWS's default endpoint"


def _s3_settings() -> dict[str, Any]:
    """boto3 client arguments: a Beam job's ``--s3_*`` flags when it has any, else the AWS variables."""
    settings: dict[str, Any] = {}
    filesystems = sys.modules.get("apache_beam.io.filesystems")
    if filesystems is not None:  # inside a Beam job (or after FileSystems.set_options): its flags
        from apache_beam.options.pipeline_options import PipelineOptions, S3Options
        from apache_beam.options.value_provider import RuntimeValueProvider

        options = filesystems.FileSystems._pipeline_options or RuntimeValueProvider.runtime_options
        if isinstance(options, PipelineOptions):
            options = options.view_as(S3Options).get_all_options()
        options = options or {}
        for name in ("access_key_id", "secret_access_key", "session_token", "endpoint_url", "region_name"):
            if options.get(f"s3_{name}"):
                settings[f"aws_{name}" if "key" in name or "token" in name else name] = options[f"s3_{name}"]
        if options.get("s3_verify") is not None:
            settings["verify"] = options["s3_verify"]
        if options.get("s3_disable_ssl"):
            settings["use_ssl"] = False
    if "endpoint_url" not in settings:
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            settings["endpoint_url"] = endpoint
    if "region_name" not in settings and (os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")):
        settings["region_name"] = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    return settings


def _s3() -> Any:
    """A boto3 S3 client for the settings in force (one per distinct settings, thread-safe)."""
    settings = _s3_settings()
    names = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")
    env = tuple(os.environ.get(k) for k in names)
    return _client(tuple(sorted(settings.items())), env)


@functools.lru_cache(maxsize=8)
def _client(settings: tuple[tuple[str, Any], ...], _env: tuple) -> Any:
    import boto3
    from botocore.config import Config

    config = Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=10, read_timeout=60,
                    max_pool_connections=32)  # fmt: skip
    return boto3.session.Session().client("s3", config=config, **dict(settings))


def _s3_code(exc: BaseException) -> str | None:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code") or response.get("ResponseMetadata", {}).get("HTTPStatusCode"))
    return None


_CREDENTIAL_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "ExpiredToken",
                     "InvalidToken", "InvalidClientTokenId", "AuthorizationHeaderMalformed"}  # fmt: skip


def s3_error(url: str, exc: BaseException) -> StorageError:
    """One line for a failed S3 request: which URL, what went wrong, what to set."""
    from botocore import exceptions as boto

    endpoint = s3_endpoint()
    if isinstance(exc, boto.NoCredentialsError):
        return StorageError(
            f"no AWS credentials to read {url}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"
        )
    if isinstance(exc, (boto.EndpointConnectionError, boto.ConnectTimeoutError, boto.ConnectionClosedError)):
        return StorageError(
            f"cannot reach the S3 endpoint {endpoint} for {url}: check AWS_ENDPOINT_URL and the network ({exc})"
        )
    if isinstance(exc, (boto.ReadTimeoutError, boto.ResponseStreamingError)):
        return StorageError(f"reading {url} from {endpoint} failed ({exc}): run the command again")
    code = _s3_code(exc)
    if code == "NoSuchBucket":
        return _no_bucket(url)
    if code in _CREDENTIAL_CODES:
        return StorageError(
            f"{endpoint} refused the credentials for {url} ({code}): check AWS_ACCESS_KEY_ID, "
            "AWS_SECRET_ACCESS_KEY and that they may read the bucket"
        )
    if code in ("NoSuchKey", "404"):
        return StorageError(f"{url} does not exist at {endpoint}")
    if isinstance(exc, boto.BotoCoreError) or code:
        return StorageError(f"S3 request for {url} at {endpoint} failed ({code or type(exc).__name__}: {exc})")
    return StorageError(f"S3 request for {url} at {endpoint} failed: {exc}")


def _check_bucket(url: str) -> None:
    """Raises the missing-bucket :class:`StorageError` if ``url``'s bucket does not exist."""
    bucket = split_s3(url)[0]
    try:
        _s3().head_bucket(Bucket=bucket)
    except Exception as exc:  # noqa: BLE001
        if _s3_code(exc) in ("404", "NoSuchBucket"):
            raise _no_bucket(url) from None
        raise s3_error(url, exc) from None


def _no_bucket(url: str) -> StorageError:
    return StorageError(
        f"bucket {split_s3(url)[0]!r} of {url} does not exist at {s3_endpoint()}: check the URL (and AWS_ENDPOINT_URL)"
    )


class _S3Stream(io.RawIOBase):
    """An S3 object read front to back with one streamed GET, reopened at the offset if it breaks."""

    def __init__(self, url: str):
        super().__init__()
        self.url = url
        self.bucket, self.key = split_s3(url)
        self.position = 0
        self.size: int | None = None
        self.body: Any = None
        self._open()

    def _open(self) -> None:
        try:
            kwargs = {"Range": f"bytes={self.position}-"} if self.position else {}
            response = _s3().get_object(Bucket=self.bucket, Key=self.key, **kwargs)
        except Exception as exc:  # noqa: BLE001
            if _s3_code(exc) == "InvalidRange":  # at the end already
                self.body = io.BytesIO(b"")
                return
            raise s3_error(self.url, exc) from None
        if self.size is None:
            self.size = int(response.get("ContentLength", 0))
        self.body = response["Body"]

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        from botocore import exceptions as boto

        if self.size is not None and self.position >= self.size:
            return 0
        for attempt in range(_RETRIES + 1):
            try:
                data = self.body.read(len(buffer))
                break
            except (boto.ReadTimeoutError, boto.ResponseStreamingError, boto.ConnectionClosedError, OSError) as exc:
                if attempt == _RETRIES:
                    raise s3_error(self.url, exc) from None
                self._open()
        buffer[: len(data)] = data
        self.position += len(data)
        return len(data)

    def close(self) -> None:
        if self.body is not None:
            self.body.close()
            self.body = None
        super().close()


# --------------------------------------------------------------------------- Beam and TensorFlow


def _beam_has(kind: str) -> bool:
    """Whether Beam can read ``kind``: it has the filesystem and, for ``gs``, the GCS client it needs.

    Beam 2.78 registers its GCS filesystem even without ``apache-beam[gcp]``, then fails on the
    first read ("GCP dependencies are not installed"): then gs:// is TensorFlow's.
    """
    try:
        from apache_beam.io.filesystem import FileSystem
        from apache_beam.io.filesystems import FileSystems  # noqa: F401 - registers the filesystems
    except ImportError:
        return False
    if kind == "gs":
        try:
            from apache_beam.io.gcp import gcsio
        except ImportError:
            return False
        if not getattr(gcsio, "GCS_INSTALLED", True):
            return False
    return any(fs.scheme() == kind for fs in FileSystem.get_all_subclasses())


def _beam() -> Any:
    """Beam's FileSystems, with default options when no job set any (so its S3 reads the AWS variables)."""
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.options.value_provider import RuntimeValueProvider

    if FileSystems._pipeline_options is None and RuntimeValueProvider.runtime_options is None:
        FileSystems.set_options(PipelineOptions([]))
    return FileSystems


def _tf() -> Any:
    try:
        import tensorflow as tf
    except ImportError:
        raise StorageError(
            "reading gs:// needs Beam's GCS filesystem (pip install 'apache-beam[gcp]') or TensorFlow"
        ) from None
    return tf


def _guard(url: str, call: Any) -> Any:
    """Runs a TensorFlow filesystem call; a store that cannot be used is one line."""
    tf = _tf()
    try:
        return call()
    except tf.errors.NotFoundError:
        raise
    except tf.errors.OpError as exc:
        message = " ".join((exc.message or type(exc).__name__).split())
        raise StorageError(
            f"cannot read {url} ({message[:300]}): check the URL and Google's default credentials "
            "(GOOGLE_APPLICATION_CREDENTIALS or gcloud auth application-default login)"
        ) from None
