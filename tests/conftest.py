import os

# Nothing in the tests may reach a hub.
for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ[var] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data sets not found at {SHARED_DATA} (CI and dev machines have ../shared/data)")
    return SHARED_DATA


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
