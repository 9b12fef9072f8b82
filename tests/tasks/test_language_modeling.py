"""LanguageModeling.training_step with the fused LM head: the same loss, parameter
gradients and memory as the unfused path, taken only when the network asks for it."""

import math

import pytest
import torch

from mmkit.models.transformer_xl import TransformerXL
from mmkit.tasks.language_modeling import LanguageModeling

pytestmark = pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")


def task(fused_head: bool, output_normalizer="multimax", **kw) -> LanguageModeling:
    torch.manual_seed(0)
    net = TransformerXL(40, "test", mem_len=6, dropout=0.1, output_normalizer=output_normalizer,
                        fused_head=fused_head, head_chunk_size=5, **kw).double()
    with torch.no_grad():
        for p in net.output_normalizer.parameters():
            p.uniform_(-0.8, 0.8)
    return LanguageModeling(net, label_smoothing=0.1).train()


def head_calls(module: LanguageModeling) -> list[int]:
    calls: list[int] = []
    module.network.head.register_forward_hook(lambda *_: calls.append(1))
    return calls


def steps(module: LanguageModeling, batches) -> list[tuple[torch.Tensor, list[torch.Tensor]]]:
    """Loss and gradients of consecutive training steps (the memory carries over)."""
    out = []
    for i, batch in enumerate(batches):
        torch.manual_seed(10 + i)  # the same dropout masks for both modules
        loss = module.training_step(batch, i)
        grads = torch.autograd.grad(loss, list(module.network.parameters()), allow_unused=True)
        out.append((loss.detach(), grads))
    return out


@pytest.mark.parametrize("tie_weights", [True, False])
def test_fused_training_step_equals_unfused(tie_weights):
    unfused, fused = task(False, tie_weights=tie_weights), task(True, tie_weights=tie_weights)
    fused.network.load_state_dict(unfused.network.state_dict())
    assert fused.fused_training_loss and not unfused.fused_training_loss
    calls = head_calls(fused)
    batches = [(torch.randint(0, 40, (2, 7)), torch.randint(0, 40, (2, 7))) for _ in range(2)]
    ref, got = steps(unfused, batches), steps(fused, batches)
    assert not calls  # the fused path never builds the full logits through `head`
    for (ref_loss, ref_grads), (loss, grads) in zip(ref, got):
        torch.testing.assert_close(loss, ref_loss, rtol=1e-10, atol=1e-12)
        for g, r in zip(grads, ref_grads):
            assert (g is None) == (r is None)
            if r is not None:
                torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-11)
    for a, b in zip(fused.mems["train"], unfused.mems["train"]):
        assert torch.equal(a, b)


def test_default_and_unsupported_normalizer_use_the_unfused_path():
    for module in (task(False), _sparse_fused()):
        assert not module.fused_training_loss
        calls = head_calls(module)
        module.training_step((torch.randint(0, 40, (2, 7)), torch.randint(0, 40, (2, 7))), 0)
        assert len(calls) == 1


def _sparse_fused() -> LanguageModeling:
    with pytest.warns(UserWarning, match="unfused loss"):
        return task(True, output_normalizer="sparsemax")


def test_evaluation_keeps_the_full_logits():
    module = task(True).eval()
    logits, _ = module(torch.randint(0, 40, (2, 7)))
    assert logits.shape == (2, 7, 40)


def test_validation_uses_the_eval_lengths_and_scores_every_token_once(tmp_path):
    """eval_tgt_len windows, the network's eval_mem_len: with a memory as long as the stream,
    the validation NLL is the full-context NLL of every target, each counted once."""
    from lightning.pytorch import Trainer

    from mmkit.data import TextDataModule

    text = "\n".join(f"line {i} has words {i % 7} and {i % 5}" for i in range(60)) + "\n"
    for split in ("train", "valid", "test"):
        (tmp_path / f"{split}.txt").write_text(text)
    data = TextDataModule("text", root=str(tmp_path), tokenizer="word", vocab_size=40, batch_size=2,
                          eval_batch_size=2, tgt_len=8, eval_tgt_len=5)
    data.setup()
    length = data.ids["valid"].numel() // 2
    streams = data.ids["valid"][:2 * length].view(2, length)  # [2, L]

    def validate(eval_mem_len):
        torch.manual_seed(0)
        net = TransformerXL(40, "test", mem_len=4, eval_mem_len=eval_mem_len).double()
        module = LanguageModeling(net)
        seen = []
        net.register_forward_pre_hook(lambda _, args: seen.append(args[0].shape[1]))
        trainer = Trainer(accelerator="cpu", logger=False, enable_checkpointing=False,
                          enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
        metrics = trainer.validate(module, datamodule=data, verbose=False)[0]
        return net, metrics, seen

    net, metrics, seen = validate(eval_mem_len=length)
    assert set(seen[:-1]) == {5} and sum(seen) == length - 1  # eval_tgt_len windows over the stream
    with torch.no_grad():
        logp = torch.log_softmax(net.eval()(streams[:, :-1])[0], -1)  # one full-context pass
    nll = -logp.gather(-1, streams[:, 1:, None]).mean()
    assert metrics["val/ppl"] == pytest.approx(math.exp(nll.item()), rel=1e-6)
    _, short, _ = validate(eval_mem_len=None)  # the training mem_len (4): a different number
    assert short["val/ppl"] != pytest.approx(metrics["val/ppl"], rel=1e-6)
