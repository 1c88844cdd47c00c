import os

# Nothing in the tests may reach a hub.
for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ[var] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import socket  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# An S3 endpoint (moto) for run folders in object storage. Set before any Ray cluster starts, so that
# its workers inherit it; the server itself starts only for tests that ask for `s3_bucket`.
S3_PORT = free_port()
os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{S3_PORT}", AWS_ACCESS_KEY_ID="testing",
                  AWS_SECRET_ACCESS_KEY="testing", AWS_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")

os.environ.pop("MLFLOW_TRACKING_URI", None)  # jobs in tests log into their own run folders


@pytest.fixture(autouse=True)
def mlflow_uri_per_test(monkeypatch):
    """A test that reads a store back (``mlflow.set_tracking_uri`` exports the URI) must not send the
    next test's jobs there."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data sets not found at {SHARED_DATA} (CI and dev machines have ../shared/data)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def s3_server():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=S3_PORT, verbose=False)
    server.start()
    yield os.environ["AWS_ENDPOINT_URL"]
    server.stop()


@pytest.fixture
def s3_bucket(s3_server, request) -> str:
    """A fresh bucket on the local S3 endpoint, as ``s3://NAME``."""
    import pyarrow.fs as pafs

    name = "t-" + request.node.name.lower().replace("_", "-")[:40].strip("-")
    pafs.S3FileSystem(endpoint_override=s3_server, allow_bucket_creation=True).create_dir(name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def policy_dir() -> Path:
    from rlhf_ray import models

    return models.default_policy_dir()


@pytest.fixture
def smol_tokenizer(policy_dir):
    """The real SmolLM2 tokenizer (ChatML template), fresh per test since tests add tokens to it."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(policy_dir)


@pytest.fixture(scope="session")
def tiny_policy_dir(tmp_path_factory, policy_dir):
    """A random-weight Llama-architecture model with the real SmolLM2 tokenizer, saved as an HF folder."""
    from transformers import AutoTokenizer

    from rlhf_ray import models

    tok = AutoTokenizer.from_pretrained(policy_dir)
    path = tmp_path_factory.mktemp("tiny_policy")
    models.save_policy(models.tiny_causal_lm(tok, hidden_size=64, layers=2), tok, path)
    return path
