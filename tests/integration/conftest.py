"""One local Ray cluster for the whole integration run."""
import os

import pytest

from rlhf_ray import models

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
    tok = models.load_tokenizer(str(policy_dir))
    path = tmp_path_factory.mktemp("tiny_vllm_policy")
    models.save_policy(models.tiny_causal_lm(tok, hidden_size=128, layers=2, heads=2), tok, path)
    return path


@pytest.fixture(scope="session")
def tiny_vllm_rm_dir(tiny_vllm_policy_dir, tmp_path_factory):
    """A random-weight Llama reward model (last-token scalar head) with the SmolLM2 tokenizer."""
    tok = models.load_tokenizer(str(tiny_vllm_policy_dir))
    path = tmp_path_factory.mktemp("tiny_rm")
    models.load_reward_model(str(tiny_vllm_policy_dir), "scalar", tok).save_pretrained(path)
    tok.save_pretrained(path)
    return path
