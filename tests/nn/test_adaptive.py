"""Adaptive input and adaptive softmax: exact distributions for every normalizer, the
documented loss, tying, gradients, and Transformer-XL with the adaptive head."""

import math

import pytest
import torch

from mmkit.models.transformer_xl import TransformerXL
from mmkit.nn import AdaptiveHead, AdaptiveInput
from mmkit.normalizers import NORMALIZERS, build_normalizer

V, D, CUTOFFS = 40, 16, [6, 12, 30]
LAYOUTS = [dict(div_val=1), dict(div_val=2), dict(div_val=1, d_embed=8)]


def normalizer(name, train=True):
    norm = build_normalizer(name).double().train(train)
    with torch.no_grad():  # a non-trivial SegLU / temperature / alpha
        for p in norm.parameters():
            p.uniform_(-0.5, 0.5)
    return norm


def head_and_input(cutoffs=CUTOFFS, **layout):
    torch.manual_seed(0)
    head = AdaptiveHead(V, D, cutoffs, **layout).double()
    with torch.no_grad():  # non-zero biases and larger weights: spread-out distributions
        for p in head.parameters():
            p.normal_(std=0.5)
    return head, AdaptiveInput(V, D, cutoffs, **layout).double()


def expected_probs(head, h, norm):
    """p(w) re-derived from the parameters: φ(head)[w], or φ(head)[cluster] · φ(cluster)[w]."""
    bounds = [0, *head.cutoffs, V]

    def level(i):
        hp = h @ head.projections[i] if len(head.projections) else h  # [N, d_i]
        if head.div_val == 1:
            w, b = head.weights[0][bounds[i]:bounds[i + 1]], head.biases[0][bounds[i]:bounds[i + 1]]
        else:
            w, b = head.weights[i], head.biases[i]
        if i == 0:
            w, b = torch.cat([w, head.cluster_weight]), torch.cat([b, head.cluster_bias])
        return norm(hp @ w.T + b, dim=-1)

    top = level(0)
    cols = [top[:, :bounds[1]]]
    for i in range(1, len(bounds) - 1):
        cols.append(top[:, bounds[1] + i - 1, None] * level(i))
    return torch.cat(cols, dim=-1)  # [N, V]


@pytest.mark.parametrize("layout", LAYOUTS, ids=str)
@pytest.mark.parametrize("name", list(NORMALIZERS))
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_log_probs_are_the_product_distribution_and_sum_to_one(name, layout, train):
    head, _ = head_and_input(**layout)
    norm = normalizer(name, train)
    h = torch.randn(2, 5, D, dtype=torch.float64)
    logp = head.log_probs(h, norm)  # [2, 5, V]
    assert logp.shape == (2, 5, V) and logp.dtype == torch.float64
    torch.testing.assert_close(logp.logsumexp(-1), torch.zeros(2, 5, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(logp.exp(), expected_probs(head, h.reshape(-1, D), norm).view(2, 5, V),
                               atol=1e-12, rtol=1e-10)
    target = torch.randint(0, V, (2, 5))
    torch.testing.assert_close(head.target_log_prob(h, target, norm),
                               logp.gather(-1, target[..., None])[..., 0], atol=1e-12, rtol=0)


@pytest.mark.parametrize("name", ["softmax", "multimax"])
@pytest.mark.parametrize("layout", LAYOUTS, ids=str)
def test_loss_is_mean_negative_log_likelihood_for_softmax_and_multimax(name, layout):
    head, _ = head_and_input(**layout)
    norm = normalizer(name)
    h = torch.randn(3, 7, D, dtype=torch.float64)
    target = torch.randint(0, V, (3, 7))
    target[0, :2] = -100  # ignored
    p = expected_probs(head, h.reshape(-1, D), norm)  # [21, V]
    keep = target.reshape(-1) != -100
    nll = -p[keep].gather(-1, target.reshape(-1)[keep, None]).log()
    torch.testing.assert_close(head.loss(h, target, norm), nll.mean(), atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(head.loss(h, target, norm, reduction="sum"), nll.sum(), atol=1e-11, rtol=1e-12)


@pytest.mark.parametrize("name", ["sparsemax", "entmax15", "entmax", "evsoftmax"])
def test_loss_of_other_normalizers_is_head_loss_plus_in_cluster_loss(name):
    head, _ = head_and_input(div_val=2)
    norm = normalizer(name)
    h = torch.randn(12, D, dtype=torch.float64)
    target = torch.arange(1, V, 3)[:12]  # every cluster
    expected = []
    for n in range(12):  # one token at a time, straight from the normalizer's own loss
        t, hn = int(target[n]), h[n:n + 1]
        i = sum(t >= c for c in CUTOFFS)
        head_t = t if i == 0 else CUTOFFS[0] + i - 1
        loss = norm.loss(head.logits(hn, 0), torch.tensor([head_t]))
        if i:
            loss = loss + norm.loss(head.logits(hn, i), torch.tensor([t - ([0] + CUTOFFS)[i]]))
        expected.append(loss)
    torch.testing.assert_close(head.loss(h, target, norm), torch.stack(expected).mean(),
                               atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("name", list(NORMALIZERS))
def test_without_cutoffs_the_head_is_a_linear_layer_and_the_input_an_embedding(name):
    head, inp = head_and_input(cutoffs=[])
    norm = normalizer(name)
    linear = torch.nn.Linear(D, V).double()
    with torch.no_grad():
        linear.weight.copy_(head.weights[0])
        linear.bias.copy_(head.biases[0])
    h, target = torch.randn(9, D, dtype=torch.float64), torch.randint(0, V, (9,))
    torch.testing.assert_close(head.log_probs(h, norm).exp(), norm(linear(h), dim=-1), atol=1e-13, rtol=0)
    torch.testing.assert_close(head.loss(h, target, norm), norm.loss(linear(h), target),
                               atol=1e-12, rtol=1e-12)
    embed = torch.nn.Embedding(V, D).double()
    embed.weight.data.copy_(inp.embeddings[0].weight)
    assert len(inp.projections) == 0 and len(head.projections) == 0
    torch.testing.assert_close(inp(target), embed(target) * math.sqrt(D), atol=0, rtol=0)


@pytest.mark.parametrize("layout", LAYOUTS[1:], ids=str)
def test_adaptive_input_is_each_clusters_projected_table(layout):
    _, inp = head_and_input(**layout)
    tokens = torch.tensor([[0, 5, 6, 11], [12, 29, 30, 39]])
    out = inp(tokens)
    bounds = [0, *CUTOFFS, V]
    for tok, vec in zip(tokens.reshape(-1).tolist(), out.reshape(-1, D)):
        i = sum(tok >= c for c in CUTOFFS)
        table, row = (inp.embeddings[0], tok) if inp.div_val == 1 else (inp.embeddings[i], tok - bounds[i])
        proj = inp.projections[0 if inp.div_val == 1 else i]
        size = (layout.get("d_embed") or D) // layout["div_val"] ** (i if inp.div_val > 1 else 0)
        assert table.weight.shape[1] == size
        torch.testing.assert_close(vec, proj @ table.weight[row] * math.sqrt(D), atol=1e-14, rtol=0)


@pytest.mark.parametrize("layout", LAYOUTS[1:], ids=str)
def test_tying_shares_the_exact_tensors(layout):
    head, inp = head_and_input(**layout)
    head.tie_(inp, True, [False, True, True, True])
    for w, emb in zip(head.weights, inp.embeddings):
        assert w is emb.weight
    assert head.projections[0] is not inp.projections[0]
    for i in (1, 2, 3):
        assert head.projections[i] is inp.projections[0 if inp.div_val == 1 else i]
    with pytest.raises(ValueError, match="one flag per cluster"):
        head.tie_(inp, True, [True, True])


def test_transformer_xl_ties_as_the_original_scripts():
    wt103 = TransformerXL(V, "test", cutoffs=CUTOFFS, tie_projs=True)  # div_val 1: no projections
    assert wt103.head.weights[0] is wt103.embed.embeddings[0].weight
    assert len(wt103.head.projections) == 0 and len(wt103.embed.projections) == 0
    lm1b = TransformerXL(V, "test", d_model=64, cutoffs=CUTOFFS, div_val=4)  # the original's lm1b
    assert all(w is e.weight for w, e in zip(lm1b.head.weights, lm1b.embed.embeddings))
    assert [tuple(p.shape) for p in lm1b.head.projections] == [(64, 64), (64, 16), (64, 4), (64, 1)]
    assert not any(p is q for p in lm1b.head.projections for q in lm1b.embed.projections)  # tie_projs off
    tied = TransformerXL(V, "test", cutoffs=CUTOFFS, div_val=2, tie_projs=True)
    assert tied.head.projections[0] is not tied.embed.projections[0]
    assert all(tied.head.projections[i] is tied.embed.projections[i] for i in (1, 2, 3))
    names = {n for n, _ in tied.named_parameters()}
    assert not any(n.startswith("head.weights") or n.startswith("head.projections.1") for n in names)


def test_gradient_reaches_every_parameter():
    net = TransformerXL(V, "test", cutoffs=CUTOFFS, div_val=2, output_normalizer="multimax",
                        tie_weights=False).double().train()
    tokens = torch.arange(V).view(2, 20)  # every cluster in the input and the targets
    hidden, _ = net.forward_hidden(tokens)
    net.head_loss(hidden, tokens.roll(1, -1)).backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("name", ["softmax", "sparsemax"])
def test_adaptive_transformer_xl_memory_equals_full_context_and_caches_generation(name):
    net = TransformerXL(V, "test", mem_len=8, tgt_len=4, cutoffs=CUTOFFS, div_val=2, tie_projs=True,
                        output_normalizer=name).double().eval()
    tokens = torch.randint(0, V, (2, 16))
    full, _ = net(tokens)
    first, mems = net(tokens[:, :8])
    second, _ = net(tokens[:, 8:], mems)
    zeros = torch.zeros(2, 16, dtype=torch.float64)
    torch.testing.assert_close(full.logsumexp(-1), zeros, atol=1e-12, rtol=0)
    torch.testing.assert_close(torch.cat([first, second], 1), full, atol=1e-10, rtol=0)
    prompt = torch.randint(0, V, (2, 5))
    greedy = [net.generate(prompt, 6, greedy=True, use_cache=c) for c in (True, False)]
    assert torch.equal(*greedy)
    sampled = [net.generate(prompt, 6, top_k=5, use_cache=c, generator=torch.Generator().manual_seed(1))
               for c in (True, False)]
    assert torch.equal(*sampled)


@pytest.mark.parametrize("kwargs,match", [
    (dict(cutoffs=[12, 6]), "strictly increasing"),
    (dict(cutoffs=[6, 6]), "strictly increasing"),
    (dict(cutoffs=[0, 6]), "positive"),
    (dict(cutoffs=[6, 40]), "< vocab_size"),
    (dict(cutoffs=[6], div_val=0), "div_val"),
    (dict(cutoffs=CUTOFFS, div_val=4), "div_val"),  # 32 // 4**3 = 0
    (dict(div_val=2), "set cutoffs"),
    (dict(tie_projs=True), "set cutoffs"),
    (dict(cutoffs=CUTOFFS, div_val=2, tie_projs=[True]), "one flag per cluster"),
])
def test_bad_adaptive_configuration(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TransformerXL(V, "test", **kwargs)


def test_fused_head_is_ignored_with_a_warning():
    with pytest.warns(UserWarning, match="adaptive"):
        net = TransformerXL(V, "test", cutoffs=CUTOFFS, fused_head=True)
    assert not net.uses_fused_head


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name", ["multimax", "sparsemax"])
def test_language_modeling_trains_and_evaluates_the_adaptive_head(name, tmp_path):
    from lightning.pytorch import Trainer
    from torch.utils.data import DataLoader

    from mmkit.tasks.language_modeling import LanguageModeling

    net = TransformerXL(V, "test", mem_len=6, cutoffs=CUTOFFS, div_val=2, tie_projs=True,
                        output_normalizer=name)
    task = LanguageModeling(net, ppl_epsilon=1e-3)
    full_head_calls = []
    net.head.register_forward_hook(lambda *_: full_head_calls.append(1))
    batches = [(torch.randint(0, V, (2, 5)), torch.randint(0, V, (2, 5))) for _ in range(3)]
    before = [p.detach().clone() for p in net.parameters()]
    torch.manual_seed(1)
    loss = task.train().training_step(batches[0], 0)
    loss.backward()
    torch.manual_seed(1)  # the same dropout masks
    torch.testing.assert_close(loss, net.head_loss(net.forward_hidden(batches[0][0])[0], batches[0][1]))
    assert torch.isfinite(loss) and all(p.grad is not None for p in net.parameters())
    torch.optim.SGD(net.parameters(), lr=0.1).step()
    assert all(not torch.equal(a, b) for a, b in zip(before, net.parameters()) if b.grad.abs().sum() > 0)

    with torch.no_grad():  # the expected perplexity, re-derived from the full log-probabilities
        net.eval()
        nll, mems = [], None
        for tokens, targets in batches:
            hidden, mems = net.forward_hidden(tokens, mems)
            p = net.log_probs(hidden).exp().gather(-1, targets[..., None])[..., 0]
            if name == "sparsemax":
                p = (p + 1e-3) / (1 + 1e-3 * V)
            nll.append(-p.log())
        expected_ppl = torch.cat(nll).mean().exp()
    full_head_calls.clear()
    trainer = Trainer(accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    (metrics,) = trainer.validate(task, DataLoader(batches, batch_size=None), verbose=False)
    assert metrics["val/ppl"] == pytest.approx(float(expected_ppl), rel=1e-5)
    assert not full_head_calls  # evaluation computes only the targets' clusters
