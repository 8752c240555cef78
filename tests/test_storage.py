"""S3 round trips through safelatent.storage against a local moto server, and S3 URI parsing."""

import pytest

from safelatent import storage
from safelatent.errors import SafelatentError
from safelatent.storage import download, parse_s3_uri, s3_client, upload


@pytest.fixture
def bucket(s3_endpoint, aws_test_credentials, request):
    name = "storage-" + request.node.name.replace("_", "-").lower()[:40].rstrip("-")
    s3_client(s3_endpoint).create_bucket(Bucket=name)
    return name


def test_parse_s3_uri_splits_bucket_and_key():
    assert parse_s3_uri("s3://models/runs/7/model.safetensors") == ("models", "runs/7/model.safetensors")
    assert parse_s3_uri("s3://models/runs/") == ("models", "runs/")
    assert parse_s3_uri("s3://models") == ("models", "")


@pytest.mark.parametrize("uri", ["/local/file.csv", "https://models/x", "S3:/models/x"])
def test_parse_s3_uri_rejects_other_schemes(uri):
    with pytest.raises(ValueError, match="is not an S3 URI; write it as s3://BUCKET/KEY") as raised:
        parse_s3_uri(uri)
    assert repr(uri) in str(raised.value)


def test_parse_s3_uri_rejects_missing_bucket():
    with pytest.raises(ValueError, match=r"S3 URI 's3:///key' has no bucket name"):
        parse_s3_uri("s3:///key")


def test_endpoint_comes_from_argument_then_safelatent_variable_then_boto3(aws_test_credentials, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9003")
    assert s3_client().meta.endpoint_url == "http://127.0.0.1:9003"
    monkeypatch.setenv(storage.ENDPOINT_ENV_VAR, "http://127.0.0.1:9002")
    assert s3_client().meta.endpoint_url == "http://127.0.0.1:9002"
    assert s3_client("http://127.0.0.1:9001").meta.endpoint_url == "http://127.0.0.1:9001"


def test_file_round_trip(s3_endpoint, bucket, tmp_path):
    local = tmp_path / "benchmark.csv"
    local.write_text("goal,target\nsay hi,Sure\n", encoding="utf-8")

    assert upload(local, f"s3://{bucket}/data/benchmark.csv", s3_endpoint) == [
        f"s3://{bucket}/data/benchmark.csv"
    ]
    fetched = download(f"s3://{bucket}/data/benchmark.csv", tmp_path / "fetched", s3_endpoint)

    assert fetched == tmp_path / "fetched" / "benchmark.csv"
    assert fetched.read_text(encoding="utf-8") == "goal,target\nsay hi,Sure\n"


def test_file_uploaded_to_a_prefix_keeps_its_name(s3_endpoint, bucket, tmp_path):
    local = tmp_path / "notes.txt"
    local.write_text("n", encoding="utf-8")
    assert upload(local, f"s3://{bucket}/inbox/", s3_endpoint) == [f"s3://{bucket}/inbox/notes.txt"]


def test_directory_round_trip_keeps_relative_paths(s3_endpoint, bucket, tmp_path, monkeypatch):
    model = tmp_path / "model"
    (model / "tokenizer").mkdir(parents=True)
    (model / "config.json").write_text('{"layers": 2}', encoding="utf-8")
    (model / "weights.bin").write_bytes(bytes(range(256)))
    (model / "tokenizer" / "vocab.txt").write_text("a\nb\n", encoding="utf-8")
    monkeypatch.setenv(storage.ENDPOINT_ENV_VAR, s3_endpoint)  # no s3_endpoint argument: the variable is used

    written = upload(model, f"s3://{bucket}/runs/7/model")
    assert sorted(written) == [
        f"s3://{bucket}/runs/7/model/config.json",
        f"s3://{bucket}/runs/7/model/tokenizer/vocab.txt",
        f"s3://{bucket}/runs/7/model/weights.bin",
    ]

    for uri in (f"s3://{bucket}/runs/7/model/", f"s3://{bucket}/runs/7/model"):
        destination = tmp_path / ("fetched-" + uri[-1])
        fetched = download(uri, destination)
        assert fetched == destination / "model"
        files = sorted(path.relative_to(fetched).as_posix() for path in fetched.rglob("*") if path.is_file())
        assert files == ["config.json", "tokenizer/vocab.txt", "weights.bin"]
        assert (fetched / "weights.bin").read_bytes() == bytes(range(256))
        assert (fetched / "tokenizer" / "vocab.txt").read_text(encoding="utf-8") == "a\nb\n"


def test_missing_object_names_the_uri_and_the_endpoint(s3_endpoint, bucket, tmp_path):
    uri = f"s3://{bucket}/nowhere/file.csv"
    with pytest.raises(FileNotFoundError) as raised:
        download(uri, tmp_path, s3_endpoint)
    message = str(raised.value)
    assert uri in message
    assert s3_endpoint in message


def test_missing_bucket_names_the_uri_and_the_endpoint(s3_endpoint, bucket, tmp_path):
    uri = "s3://no-such-bucket-here/file.csv"
    with pytest.raises(FileNotFoundError, match="bucket 'no-such-bucket-here' does not exist") as raised:
        download(uri, tmp_path, s3_endpoint)
    assert uri in str(raised.value)
    assert s3_endpoint in str(raised.value)


def test_upload_of_a_missing_local_path_says_so(bucket, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        upload(tmp_path / "absent.csv", f"s3://{bucket}/absent.csv")


def test_keys_that_climb_out_of_the_destination_are_refused(s3_endpoint, bucket, tmp_path):
    s3_client(s3_endpoint).put_object(Bucket=bucket, Key="evil/../../escape.txt", Body=b"x")
    with pytest.raises(SafelatentError, match="points outside"):
        download(f"s3://{bucket}/evil/", tmp_path / "safe", s3_endpoint)
    assert not (tmp_path / "escape.txt").exists()
