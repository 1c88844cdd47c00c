"""vLLM general plugin (entry point ``vllm.general_plugins``), loaded by every vLLM process."""


def init_amx() -> None:
    """Ask Linux for AMX tile permission before vLLM's CPU bf16 attention uses it (else SIGILL)."""
    import torch

    init = getattr(torch.cpu, "_init_amx", None)
    if init is not None:
        init()
