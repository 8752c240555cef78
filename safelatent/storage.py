"""Copy files and directories between this machine and S3-compatible object storage.

The endpoint comes from the caller, else SAFELATENT_S3_ENDPOINT_URL, else boto3's own default
(which honours AWS_ENDPOINT_URL). Credentials come only from boto3's usual chain (environment,
shared config files, instance roles); they are never arguments and never printed.
"""

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

import boto3
from botocore.exceptions import ClientError, NoCredentialsError

from safelatent.errors import SafelatentError

ENDPOINT_ENV_VAR = "SAFELATENT_S3_ENDPOINT_URL"

_MISSING_CODES = {"404", "NoSuchKey", "NotFound"}


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """Split "s3://bucket/some/key" into ("bucket", "some/key"); the key may be empty."""
    text = str(uri)
    if not text.startswith("s3://"):
        raise ValueError(f"{text!r} is not an S3 URI; write it as s3://BUCKET/KEY")
    bucket, _, key = text[len("s3://") :].partition("/")
    if not bucket:
        raise ValueError(f"S3 URI {text!r} has no bucket name; write it as s3://BUCKET/KEY")
    return bucket, key


def s3_client(endpoint_url: str | None = None, region: str | None = None):
    """A boto3 S3 client for the given endpoint, else SAFELATENT_S3_ENDPOINT_URL, else boto3's default."""
    endpoint = endpoint_url or os.environ.get(ENDPOINT_ENV_VAR) or None
    return boto3.client("s3", endpoint_url=endpoint, region_name=region)


def download(uri: str, dest_dir: str | os.PathLike, endpoint_url: str | None = None) -> Path:
    """Download one object, or every object under a prefix, into dest_dir.

    One object lands at dest_dir/<basename> and that file is returned. A prefix (a key ending
    in "/", or a key with no object of its own but objects under "key/") lands at
    dest_dir/<last part of the prefix>/<path relative to the prefix>, and that directory is returned.
    """
    bucket, key = parse_s3_uri(uri)
    client = s3_client(endpoint_url)
    destination = Path(dest_dir)
    with _credentials_hint(uri):
        if key and not key.endswith("/") and _object_exists(client, bucket, key):
            target = destination / PurePosixPath(key).name
            target.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, key, str(target))
            return target
        prefix = key if key.endswith("/") or not key else key + "/"
        directory = destination / (PurePosixPath(prefix).name or bucket)
        keys = _keys_under(client, bucket, prefix, uri)
        if not keys:
            raise FileNotFoundError(
                f"nothing found at {uri} (endpoint {client.meta.endpoint_url}): no object with that key "
                f"and no objects under the prefix {prefix!r}; check the bucket, the key and the endpoint"
            )
        for object_key in keys:
            target = _inside(directory, object_key[len(prefix) :], uri)
            target.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, object_key, str(target))
        return directory


def upload(local_path: str | os.PathLike, uri: str, endpoint_url: str | None = None) -> list[str]:
    """Upload a file, or a directory recursively, and return the s3 URIs written.

    A file goes to the key in uri, or to uri/<file name> when uri ends in "/" or names only a bucket.
    A directory's files go under the key as a prefix, keeping their paths relative to the directory.
    """
    source = Path(local_path)
    bucket, key = parse_s3_uri(uri)
    if not source.exists():
        raise FileNotFoundError(f"cannot upload {source} to {uri}: {source} does not exist")
    if source.is_dir():
        prefix = key if key.endswith("/") or not key else key + "/"
        pairs = [(path, prefix + path.relative_to(source).as_posix()) for path in sorted(source.rglob("*"))]
        pairs = [(path, object_key) for path, object_key in pairs if path.is_file()]
    else:
        object_key = key + source.name if key.endswith("/") or not key else key
        pairs = [(source, object_key)]
    client = s3_client(endpoint_url)
    written = []
    with _credentials_hint(uri):
        for path, object_key in pairs:
            client.upload_file(str(path), bucket, object_key)
            written.append(f"s3://{bucket}/{object_key}")
    return written


def list_keys(uri: str, endpoint_url: str | None = None) -> list[str]:
    """The object keys under an s3:// prefix, relative to it (an empty list when there are none)."""
    bucket, key = parse_s3_uri(uri)
    prefix = key if key.endswith("/") or not key else key + "/"
    client = s3_client(endpoint_url)
    with _credentials_hint(uri):
        return [object_key[len(prefix):] for object_key in _keys_under(client, bucket, prefix, uri)]


def delete_prefix(uri: str, endpoint_url: str | None = None) -> int:
    """Delete every object under an s3:// prefix; returns how many were deleted."""
    bucket, key = parse_s3_uri(uri)
    if not key:
        raise ValueError(f"refusing to delete a whole bucket ({uri}); name a prefix inside it")
    prefix = key if key.endswith("/") else key + "/"
    client = s3_client(endpoint_url)
    with _credentials_hint(uri):
        keys = _keys_under(client, bucket, prefix, uri)
        for start in range(0, len(keys), 1000):
            client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[start:start + 1000]]})
    return len(keys)


def _object_exists(client, bucket: str, key: str) -> bool:
    try:
        client.head_object(Bucket=bucket, Key=key)
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in _MISSING_CODES:
            return False
        raise
    return True


def _keys_under(client, bucket: str, prefix: str, uri: str) -> list[str]:
    keys = []
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            keys.extend(item["Key"] for item in page.get("Contents", []) if not item["Key"].endswith("/"))
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") == "NoSuchBucket":
            raise FileNotFoundError(
                f"nothing found at {uri} (endpoint {client.meta.endpoint_url}): bucket {bucket!r} does not "
                "exist; check the bucket name and the endpoint"
            ) from None
        raise
    return keys


def _inside(directory: Path, relative: str, uri: str) -> Path:
    # Object keys are untrusted: a key like "a/../../x" must not write outside the destination.
    target = (directory / relative).resolve()
    if not target.is_relative_to(directory.resolve()):
        raise SafelatentError(
            f"refusing to download {relative!r} from {uri}: its key points outside {directory}"
        )
    return target


@contextmanager
def _credentials_hint(uri: str) -> Iterator[None]:
    # boto3's bare "Unable to locate credentials" does not say what to set.
    try:
        yield
    except NoCredentialsError as error:
        raise SafelatentError(
            f"no S3 credentials found for {uri}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "(or AWS_PROFILE) in the environment"
        ) from error
