"""The LM loss (training/loss.py) in one process (TP=1): the padded vocabulary is masked in the
unfused, the fused (`native`) and the Transformer Engine (`te`) cross entropy alike, each gives
the cross entropy over the true vocabulary, and the caller's logits are never spoilt."""

from __future__ import annotations

import pytest
import torch

VOCAB, PADDED = 200, 256  # the true vocabulary, and the shard's width (128-multiple padding)


@pytest.fixture(scope="module", autouse=True)
def megatron_world():
    from megatron_chimed.platform import destroy, initialize

    initialize(tensor_parallel=1)
    yield
    destroy()


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 16, PADDED, generator=gen)
    # Padded columns far above the rest: a loss that let them in would be far off.
    logits[..., VOCAB:] = 30.0
    labels = torch.randint(0, VOCAB, (2, 16), generator=gen)
    mask = (torch.rand(2, 16, generator=gen) > 0.3).float()
    return logits, labels, mask


def _reference(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor):
    """torch's cross entropy over the true vocabulary: (loss sum, grad of the logits)."""
    x = logits.clone().requires_grad_()
    per_token = torch.nn.functional.cross_entropy(
        x[..., :VOCAB].reshape(-1, VOCAB), labels.reshape(-1), reduction="none"
    )
    loss = (per_token * mask.reshape(-1)).sum()
    loss.backward()
    return loss.detach(), x.grad


def _ours(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, fusion=None):
    from megatron_chimed.training.loss import masked_lm_loss

    x = logits.clone().requires_grad_()
    loss, tokens, report = masked_lm_loss(x, labels, mask, VOCAB, fusion)
    loss.backward()
    return loss.detach(), x.grad, tokens, report["lm loss"]


def test_unfused_loss_is_the_cross_entropy_over_the_true_vocabulary() -> None:
    logits, labels, mask = _batch()
    want, want_grad = _reference(logits, labels, mask)
    loss, grad, tokens, report = _ours(logits, labels, mask)
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    assert torch.allclose(grad, want_grad, atol=1e-6)
    assert grad[..., VOCAB:].abs().max().item() == 0.0
    assert tokens.item() == int(mask.sum().item())
    assert report.tolist() == pytest.approx([want.item(), mask.sum().item()], rel=1e-5)


def test_native_fused_loss_equals_the_unfused_one() -> None:
    """megatron's fused cross entropy, run eagerly (its torch.compile would take half a
    minute on the CPU; the fusion does not change the arithmetic): the same loss, and the
    gradients up to its bf16 rounding."""
    logits, labels, mask = _batch()
    unfused, unfused_grad, _, _ = _ours(logits, labels, mask)
    with torch._dynamo.config.patch(disable=True):
        fused, fused_grad, _, _ = _ours(logits, labels, mask, fusion="native")
    assert fused.item() == pytest.approx(unfused.item(), rel=1e-5)
    assert (fused_grad - unfused_grad).abs().max().item() < 4e-3  # bf16 of values <= 1
    assert fused_grad[..., VOCAB:].abs().max().item() == 0.0


def test_te_fusion_gets_the_masked_logits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without TE here: a stand-in for megatron's te_parallel_cross_entropy sees what TE's
    kernel would, the padded columns at -inf."""
    from megatron.core import tensor_parallel
    from megatron.core.extensions import transformer_engine

    seen = []

    def fake_te(logits, labels, group, *_):
        seen.append(logits.detach().clone())
        return tensor_parallel.vocab_parallel_cross_entropy(logits, labels)

    monkeypatch.setattr(transformer_engine, "te_parallel_cross_entropy", fake_te, raising=False)
    logits, labels, mask = _batch()
    want, _ = _reference(logits, labels, mask)
    loss, _, _, _ = _ours(logits, labels, mask, fusion="te")
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    assert torch.isinf(seen[0][..., VOCAB:]).all() and torch.isfinite(seen[0][..., :VOCAB]).all()


def test_the_callers_logits_are_left_alone() -> None:
    """megatron's cross entropy works in place on its input: on a shard without padding (no
    mask copy) it must get a copy, not the caller's tensor (gpu_check reads them after)."""
    from megatron_chimed.training.loss import token_losses

    logits, labels, _ = _batch()
    before = logits.clone()
    token_losses(logits, labels, PADDED)  # the whole shard is real vocabulary
    assert torch.equal(logits, before)
    token_losses(logits, labels, VOCAB)
    assert torch.equal(logits, before)


def test_the_loss_follows_the_models_transformer_config() -> None:
    from types import SimpleNamespace

    from megatron_chimed.training.loss import cross_entropy_fusion

    def model(fusion: bool, impl: str):
        config = SimpleNamespace(cross_entropy_loss_fusion=fusion, cross_entropy_fusion_impl=impl)
        # wrapped as the loop's model is (DDP -> Float16Module -> GPTModel)
        return SimpleNamespace(module=SimpleNamespace(module=SimpleNamespace(config=config)))

    assert cross_entropy_fusion(model(True, "native")) == "native"
    assert cross_entropy_fusion(model(True, "te")) == "te"
    assert cross_entropy_fusion(model(False, "te")) is None
