"""The end of a graph decode step (greedy argmax, the id to the next step and the host, the position moved on):
the Triton kernel against its torch reference and torch.argmax's tie rules."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="the kernels are Triton programs")

from gptoss_kernels import sample  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _buffers(position: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    token = torch.full((1,), -1, dtype=torch.long, device=DEVICE)
    host = torch.full((3,), -1, dtype=torch.long, pin_memory=DEVICE == "cuda")
    return token, host, torch.tensor([position], device=DEVICE)


def _logits(case: str, n: int) -> torch.Tensor:
    x = torch.randn(n, generator=torch.Generator().manual_seed(n))
    if case == "tie":  # the first of equal maxima wins, across programs too
        x[n - 1] = x[n // 3] = x[n // 2] = 50.0
    elif case == "negative":
        x = -x.abs() - 1
    elif case == "signed_zero":  # -0.0 == +0.0: the first of them wins
        x = -x.abs() - 1
        x[n // 4], x[n // 2] = -0.0, 0.0
    elif case == "all_minus_inf":
        x[:] = float("-inf")
    elif case == "last":
        x[n - 1] = 100.0
    return x.to(DEVICE)


@pytest.mark.parametrize("n", [7, sample.BLOCK, 3 * sample.BLOCK + 5])
@pytest.mark.parametrize("case", ["random", "tie", "negative", "signed_zero", "all_minus_inf", "last"])
def test_argmax_publish_matches_reference(case: str, n: int) -> None:
    publisher = sample.Publisher(torch.device(DEVICE))
    logits = _logits(case, n)
    for position in (6, 7):  # twice: the last program resets the scratch the next launch merges into
        token, host, pos = _buffers(position)
        ref_token, ref_host, ref_pos = _buffers(position)
        ref_host = ref_host.to(DEVICE)
        publisher(logits, token, host, pos)
        sample.publish_reference(logits, ref_token, ref_host, ref_pos)
        assert token.item() == ref_token.item() == torch.argmax(logits).item()
        assert host.tolist() == ref_host.tolist() and host[(position + 1) % 3] == token.item()
        assert pos.item() == ref_pos.item() == position + 1


def test_publish_of_a_sampled_id() -> None:
    token, host, pos = _buffers(10)
    token.fill_(1234)
    sample.Publisher(torch.device(DEVICE))(None, token, host, pos)
    assert host.tolist() == [-1, -1, 1234] and token.item() == 1234 and pos.item() == 11  # slot (10 + 1) % 3


def test_publish_rejects_wrong_buffers() -> None:
    token, host, pos = _buffers(0)
    with pytest.raises(ValueError, match="long"):
        sample.Publisher(torch.device(DEVICE))(torch.zeros(8, device=DEVICE), token, host.int(), pos)
