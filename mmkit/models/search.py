"""Decoding: for :class:`~mmkit.models.seq2seq.Seq2SeqTransformer`, greedy and batched beam
search, both incremental (key/value caches in every decoder layer); for
:class:`~mmkit.models.transformer_xl.TransformerXL`, continuing a prompt
(:func:`continue_prompt`, greedy or sampled, with or without the memory cache)."""

from __future__ import annotations

import torch
from torch import Tensor


def max_lengths(src: Tensor, pad_id: int, a: float, b: int) -> int:
    """The longest output to allow: ``a · (longest source) + b`` (fairseq's max_len_a/b)."""
    return max(1, int(a * int((src != pad_id).sum(-1).max()) + b))


@torch.no_grad()
def greedy_decode(model, src: Tensor, *, max_len_a: float = 1.5, max_len_b: int = 10) -> list[list[int]]:
    """The most probable token at each step, until EOS or the length limit."""
    memory, mask = model.encode(src)
    caches = model.new_caches()
    batch, limit = src.shape[0], max_lengths(src, model.pad_id, max_len_a, max_len_b)
    last = torch.full((batch, 1), model.bos_id, dtype=torch.long, device=src.device)
    out: list[list[int]] = [[] for _ in range(batch)]
    done = torch.zeros(batch, dtype=torch.bool, device=src.device)
    for step in range(limit):
        logp = model.log_probs(model.decode(last, memory, mask, caches, start=step)[:, -1])
        if step == limit - 1:
            nxt = torch.full_like(done, model.eos_id, dtype=torch.long)
        else:
            nxt = logp.argmax(-1)
        for i in (~done).nonzero()[:, 0].tolist():
            if int(nxt[i]) != model.eos_id:
                out[i].append(int(nxt[i]))
        done |= nxt == model.eos_id
        if bool(done.all()):
            break
        last = nxt[:, None]
    return out


@torch.no_grad()
def beam_search(model, src: Tensor, *, beam: int = 5, len_penalty: float = 1.0,
                max_len_a: float = 1.5, max_len_b: int = 10) -> list[list[int]]:
    """Batched beam search; finished hypotheses are ranked by ``score / length**len_penalty``
    (length counts the EOS), as in fairseq. ``beam=1`` is greedy decoding."""
    if beam < 1:
        raise ValueError(f"beam must be >= 1, got {beam}")
    batch, device = src.shape[0], src.device
    memory, mask = model.encode(src)
    memory, mask = memory.repeat_interleave(beam, 0), mask.repeat_interleave(beam, 0)  # [B*K, ...]
    caches = model.new_caches()
    limit = max_lengths(src, model.pad_id, max_len_a, max_len_b)
    tokens = torch.full((batch * beam, 1), model.bos_id, dtype=torch.long, device=device)
    scores = torch.full((batch, beam), float("-inf"), device=device)
    scores[:, 0] = 0.0  # all beams start identical: expand only the first
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(batch)]
    for step in range(limit):
        logp = model.log_probs(model.decode(tokens[:, -1:], memory, mask, caches, start=step)[:, -1])
        if step == limit - 1:  # force EOS at the limit
            forced = torch.full_like(logp, float("-inf"))
            forced[:, model.eos_id] = logp[:, model.eos_id].clamp_min(-1e9)
            logp = forced
        vocab = logp.shape[-1]
        cand = (scores[:, :, None] + logp.view(batch, beam, vocab)).view(batch, -1)  # [B, K*V]
        top_scores, top_idx = cand.topk(min(2 * beam, cand.shape[-1]), dim=-1)
        keep_rows, keep_tokens, new_scores = [], [], torch.full_like(scores, float("-inf"))
        for b in range(batch):
            kept = 0
            for score, idx in zip(top_scores[b].tolist(), top_idx[b].tolist()):
                if score == float("-inf") or kept == beam:
                    break
                row, token = b * beam + idx // vocab, idx % vocab
                if len(finished[b]) >= beam:
                    break
                if token == model.eos_id:
                    hyp = tokens[row, 1:].tolist()
                    finished[b].append((score / (len(hyp) + 1) ** len_penalty, hyp))
                    continue
                keep_rows.append(row)
                keep_tokens.append(token)
                new_scores[b, kept] = score
                kept += 1
            while kept < beam:  # pad dead beams (score -inf) to keep shapes
                keep_rows.append(b * beam)
                keep_tokens.append(model.pad_id)
                kept += 1
        if all(len(f) >= beam for f in finished):
            break
        index = torch.tensor(keep_rows, device=device)
        for self_cache, _ in caches:
            self_cache.reorder(index)
        tokens = torch.cat([tokens[index], torch.tensor(keep_tokens, device=device)[:, None]], 1)
        scores = new_scores
    return [max(f, key=lambda item: item[0])[1] if f else [] for f in finished]


@torch.no_grad()
def continue_prompt(model, prompt: Tensor, max_new_tokens: int, *, temperature: float = 1.0,
                    top_k: int | None = None, greedy: bool = False, use_cache: bool = True,
                    generator: torch.Generator | None = None) -> Tensor:
    """:meth:`TransformerXL.generate <mmkit.models.transformer_xl.TransformerXL.generate>`:
    ``prompt`` ``[B, T0]`` continued by ``max_new_tokens`` tokens."""
    if prompt.ndim != 2 or prompt.shape[1] == 0:
        raise ValueError(f"prompt must be [B, T0] with T0 >= 1, got {tuple(prompt.shape)}")
    if temperature <= 0 or (top_k is not None and top_k < 1) or max_new_tokens < 0:
        raise ValueError("temperature must be > 0, top_k >= 1 and max_new_tokens >= 0")
    tokens, mems, last = prompt, None, None
    if use_cache:
        for start in range(0, prompt.shape[1], model.tgt_len):
            logits, mems = model(prompt[:, start:start + model.tgt_len], mems)
        last = logits[:, -1]
    for step in range(max_new_tokens):
        if not use_cache:
            last = model(tokens)[0][:, -1]
        nxt = _pick(model, last, temperature, top_k, greedy, generator)  # [B, 1]
        tokens = torch.cat([tokens, nxt], dim=1)
        if use_cache and step + 1 < max_new_tokens:
            logits, mems = model(nxt, mems)
            last = logits[:, -1]
    return tokens


def _pick(model, logits: Tensor, temperature: float, top_k: int | None, greedy: bool,
          generator: torch.Generator | None) -> Tensor:
    """The next token ``[B, 1]`` from the last position's ``logits`` ``[B, V]``."""
    adaptive = model.adaptive  # `logits` are then log-probabilities
    ranking = logits if adaptive else model.output_normalizer.ranking(logits)
    if greedy:
        return ranking.argmax(-1, keepdim=True)
    scores = logits.float() / temperature
    if top_k is not None and top_k < scores.shape[-1]:
        kth = scores.topk(top_k, dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    probs = torch.softmax(scores, -1) if adaptive else model.output_normalizer(scores, dim=-1).float()
    return torch.multinomial(probs, 1, generator=generator)
