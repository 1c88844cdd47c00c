import os

# Nothing in the tests may reach a hub.
for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ[var] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import html  # noqa: E402
import socket  # noqa: E402
import threading  # noqa: E402
from pathlib import Path  # noqa: E402
from urllib.parse import parse_qs  # noqa: E402

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


class CompleteLikeS3:
    """CompleteMultipartUpload as S3 answers it. S3 sends 200 at once and whitespace until the object is
    assembled, with any error in the XML that follows; moto answers only when done, which for a model's
    checkpoint on a loaded 2-core machine outlasts the client's low-speed timeout (~10 s). The client then
    retries, and concurrent completes of one upload race inside moto (one closes the parts another
    reads, and the object never lands). So: whitespace while moto works, one complete per upload at a
    time, and a retry of a completed upload gets the answer it missed."""

    def __init__(self, app):
        self.app = app
        self.guard = threading.Lock()
        self.locks: dict[str, threading.Lock] = {}
        self.completed: dict[str, dict] = {}

    def __call__(self, environ, start_response):
        upload = parse_qs(environ.get("QUERY_STRING", "")).get("uploadId")
        if environ["REQUEST_METHOD"] != "POST" or not upload:
            return self.app(environ, start_response)
        with self.guard:
            lock = self.locks.setdefault(upload[0], threading.Lock())
        out = {}

        def complete():
            with lock:
                if upload[0] in self.completed:
                    out.update(self.completed[upload[0]])
                    return
                try:
                    body = b"".join(self.app(environ, lambda status, headers, exc_info=None: out.update(
                        status=status, headers=headers)))
                except Exception as e:  # an error the SDK can read (and retry), not a cut connection
                    out.update(status="500 Internal Server Error", headers=[("Content-Type", "application/xml")])
                    body = f"<Error><Code>InternalError</Code><Message>{html.escape(repr(e))}</Message></Error>".encode()
                out["body"] = body
                if out["status"].startswith("200") and b"<Error>" not in body:
                    self.completed[upload[0]] = dict(out)

        worker = threading.Thread(target=complete, daemon=True)
        worker.start()
        worker.join(1)
        if not worker.is_alive():  # quick: moto's own status and headers
            start_response(out["status"], out["headers"])
            return [out["body"]]
        start_response("200 OK", [("Content-Type", "application/xml")])

        def body():
            while worker.is_alive():
                yield b" " * 64  # the client's limit is 1 byte/s
                worker.join(0.5)
            yield out["body"]

        return body()


@pytest.fixture(scope="session")
def s3_server():
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", S3_PORT, CompleteLikeS3(DomainDispatcherApplication(create_backend_app)),
                         threaded=True, request_handler=MotoRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield os.environ["AWS_ENDPOINT_URL"]
    server.shutdown()
    thread.join()


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


# ---------------------------------------------------------------- Ray: one local cluster per run (integration, e2e)

os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_vllm_policy_dir(policy_dir, tmp_path_factory):
    """Random weights, SmolLM2's tokenizer; head_dim 64 (vLLM's CPU attention has no kernel for 16)."""
    from rlhf_ray import models

    tok = models.load_tokenizer(str(policy_dir))
    path = tmp_path_factory.mktemp("tiny_vllm_policy")
    models.save_policy(models.tiny_causal_lm(tok, hidden_size=128, layers=2, heads=2), tok, path)
    return path


@pytest.fixture(scope="session")
def tiny_vllm_rm_dir(tiny_vllm_policy_dir, tmp_path_factory):
    """A random-weight Llama reward model (last-token scalar head) with the SmolLM2 tokenizer."""
    from rlhf_ray import models

    tok = models.load_tokenizer(str(tiny_vllm_policy_dir))
    path = tmp_path_factory.mktemp("tiny_rm")
    models.load_reward_model(str(tiny_vllm_policy_dir), "bt", tok).save_pretrained(path)
    tok.save_pretrained(path)
    return path
