"""One local Ray cluster for the whole integration run."""
import os

import pytest

os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_policy_dir(tmp_path_factory, policy_dir):
    """A random-weight Llama-architecture model with the real SmolLM2 tokenizer, saved as an HF folder."""
    from transformers import AutoTokenizer

    from rlhf_ray import models

    tok = AutoTokenizer.from_pretrained(policy_dir)
    path = tmp_path_factory.mktemp("tiny_policy")
    models.save_policy(models.tiny_causal_lm(tok, hidden_size=64, layers=2), tok, path)
    return path
