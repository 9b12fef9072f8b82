"""Mixed precision: bf16-mixed training on CPU for every task and normalizer (finite
train and val metrics), normalizers and their losses computed in fp32 inside autocast,
and 16-mixed on CUDA (``gpu``), including MultiMax attention through the fused kernel.

"fp32 inside" is checked on the real models: a forward hook on every
:class:`~mmkit.normalizers.Normalizer` records its (half-precision) scores and output
during an autocast forward; afterwards, outside autocast, the same module on the
fp32-upcast scores must give exactly that output once rounded to the output dtype.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import yaml
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

from mmkit.cli import MMKitCLI
from mmkit.kernels import flash as kernels
from mmkit.models import Seq2SeqTransformer, TransformerXL, VisionTransformer
from mmkit.nn.attention import capture_attention
from mmkit.normalizers import MultiMax, Normalizer, make_normalizer

from .conftest import quiet_trainer_args

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"vit": ROOT / "configs/vit/mnist.yaml", "lm": ROOT / "configs/lm/kjv.yaml",
           "mt": ROOT / "configs/mt/numbers_en_de.yaml"}
NORMALIZERS = ["softmax", "sparsemax", "entmax15", "entmax", "multimax"]
#: The default (fast) subset: every normalizer on the ViT; LM and MT with one of each kind.
FAST = {"vit": set(NORMALIZERS), "lm": {"softmax", "multimax", "sparsemax"},
        "mt": {"softmax", "multimax", "entmax15"}}
CELLS = [pytest.param(task, name, id=f"{task}-{name}",
                      marks=() if name in FAST[task] else pytest.mark.slow)
         for task in CONFIGS for name in NORMALIZERS]


def overlay(name: str) -> dict:
    """The ``network.init_args`` of ``configs/normalizer/<name>.yaml``."""
    text = (ROOT / "configs/normalizer" / f"{name}.yaml").read_text()
    return yaml.safe_load(text)["model"]["init_args"]["network"]["init_args"]


def tiny_args(task: str, steps: int) -> list[str]:
    """Flags for a few tiny steps of ``task`` and one validation batch."""
    common = ["--model.network.init_args.preset=test", "--trainer.limit_val_batches=1",
              "--trainer.num_sanity_val_steps=0"]
    if task == "vit":
        return [*common, "--trainer.max_epochs=1", f"--trainer.limit_train_batches={steps}",
                "--data.init_args.batch_size=8"]
    steps_args = [f"--trainer.max_steps={steps}", f"--trainer.val_check_interval={steps}"]
    if task == "lm":  # the embedded KJV, cut to its first 20k characters per split
        return [*common, *steps_args, "--model.network.init_args.vocab_size=300",
                "--data.init_args.vocab_size=300", "--data.init_args.max_chars=20000",
                "--data.init_args.batch_size=4", "--data.init_args.eval_batch_size=2",
                "--data.init_args.tgt_len=16"]
    return [*common, *steps_args, "--model.network.init_args.vocab_size=400",
            "--data.init_args.vocab_size=400", "--data.init_args.num_train=200",
            "--data.init_args.num_valid=4", "--data.init_args.num_test=4",
            "--data.init_args.max_tokens=256", "--data.init_args.eval_batch_size=4",
            "--data.init_args.max_number=300", "--model.init_args.beam=1",
            "--model.init_args.max_len_b=3", "--model.init_args.max_len_a=0.5"]


def fit(task: str, name: str, tmp_path: Path, precision: str, steps: int = 2,
        extra: tuple[str, ...] = ()) -> tuple[MMKitCLI, list[dict]]:
    args = ["fit", "-c", str(CONFIGS[task]), "-c", str(ROOT / "configs/normalizer" / f"{name}.yaml"),
            *tiny_args(task, steps), f"--trainer.precision={precision}", *extra,
            *quiet_trainer_args(tmp_path)]
    cli = MMKitCLI(args=args)
    with open(Path(cli.trainer.logger.log_dir) / "metrics.csv") as f:
        return cli, list(csv.DictReader(f))


def check_finite_run(cli: MMKitCLI, rows: list[dict], steps: int = 2) -> None:
    assert cli.trainer.global_step == steps
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    val = {k: float(v) for r in rows for k, v in r.items() if k.startswith("val/") and v}
    assert len(losses) == steps and all(math.isfinite(x) for x in losses), losses
    assert "val/loss" in val and all(math.isfinite(x) for x in val.values()), val


pytestmark = pytest.mark.usefixtures("in_tmp")


@pytest.mark.parametrize("task, name", CELLS)
def test_bf16_mixed_training_gives_finite_losses_and_metrics(task, name, tmp_path):
    cli, rows = fit(task, name, tmp_path, "bf16-mixed")
    assert cli.trainer.precision == "bf16-mixed"
    check_finite_run(cli, rows)


# ---- fp32 inside: hooks on every normalizer of each model ----------------------------------

def build(task: str, name: str) -> tuple[nn.Module, tuple[Tensor, ...]]:
    """A test-size network of ``task`` with normalizer overlay ``name``, and its inputs."""
    kinds = overlay(name)
    if task == "vit":
        net = VisionTransformer(preset="test", img_size=28, patch_size=7, in_chans=1, num_classes=10,
                                **kinds)
        return net, (torch.randn(3, 1, 28, 28),)
    if task == "lm":
        return TransformerXL(vocab_size=50, preset="test", dropout=0.0, **kinds), \
            (torch.randint(0, 50, (2, 12)),)
    net = Seq2SeqTransformer(vocab_size=50, preset="test", dropout=0.0, **kinds)
    src = torch.randint(3, 50, (3, 9))
    src[0, 6:] = net.pad_id  # padding: the source keep-mask reaches the normalizers
    return net, (src, torch.randint(3, 50, (3, 7)))


@contextmanager
def record_normalizers(net: nn.Module) -> Iterator[list[tuple[Normalizer, tuple, dict, Tensor]]]:
    """Record ``(module, args, kwargs, output)`` of every normalizer forward in ``net``."""
    calls: list[tuple[Normalizer, tuple, dict, Tensor]] = []

    def hook(module: nn.Module, args: tuple, kwargs: dict, out: Tensor) -> None:
        calls.append((module, tuple(a.detach() for a in args), dict(kwargs), out.detach()))

    handles = [m.register_forward_hook(hook, with_kwargs=True)
               for m in net.modules() if isinstance(m, Normalizer)]
    try:
        # SoftMax attention runs SDPA, not the module; capturing takes the materialized
        # path, so the SoftMax module is called too (the other normalizers' path on CPU).
        with capture_attention(lambda *_: None):
            yield calls
    finally:
        for h in handles:
            h.remove()


class HalfOps(TorchDispatchMode):
    """Records the aten ops that return a half-precision tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if any(isinstance(t, Tensor) and t.dtype in (torch.float16, torch.bfloat16)
               for t in (out if isinstance(out, (tuple, list)) else (out,))):
            self.ops.add(func.overloadpacket.__name__)
        return out


#: Half-precision results a normalizer may make: the -inf check (amin) and the final cast;
#: on CUDA the Triton kernels read half scores and compute in fp32 in registers, so their
#: half tensors are only allocations and views (the output they write, reshaped).
ALLOWED_HALF_OPS = {"amin", "_to_copy"}
NO_ARITHMETIC_OPS = {"empty", "empty_like", "empty_strided", "view", "_unsafe_view", "permute",
                     "transpose", "expand", "as_strided", "alias", "detach"}


def assert_computed_in_fp32(calls: list, half: torch.dtype) -> None:
    """Each recorded output equals the module on the fp32-upcast scores, rounded, and a
    rerun under autocast makes no half-precision intermediate."""
    for module, args, kwargs, out in calls:
        scores = args[0]
        assert scores.dtype == half and out.dtype == half  # autocast was in effect
        with torch.no_grad():
            ref = module(scores.float(), *args[1:], **kwargs)
            with torch.autocast(scores.device.type, dtype=half), HalfOps() as spy:
                again = module(*args, **kwargs)
        assert ref.dtype == torch.float32 and torch.equal(again, out)
        bad = (out != ref.to(half)).sum().item()
        assert bad == 0, f"{type(module).__name__}: {bad}/{out.numel()} entries differ from fp32"
        allowed = ALLOWED_HALF_OPS | (NO_ARITHMETIC_OPS if scores.is_cuda else set())
        assert spy.ops <= allowed, f"{type(module).__name__} computed {spy.ops} in {half}"


@pytest.mark.parametrize("task, name", CELLS)
def test_normalizers_compute_in_fp32_under_bf16_autocast(task, name):
    net, inputs = build(task, name)
    with record_normalizers(net) as calls, torch.autocast("cpu", dtype=torch.bfloat16):
        logits = net(*inputs)
        logits = logits[0] if isinstance(logits, tuple) else logits  # Transformer-XL: (logits, mems)
        target = torch.randint(0, logits.shape[-1], logits.shape[:-1])
        loss = net.output_normalizer.loss(logits, target)
    attention_layers = sum(isinstance(getattr(m, "normalizer", None), Normalizer) for m in net.modules())
    assert len(calls) >= attention_layers > 0
    assert_computed_in_fp32(calls, torch.bfloat16)
    assert logits.dtype == torch.bfloat16  # the head ran under autocast
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for m in net.modules() if isinstance(m, Normalizer) for p in m.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", NORMALIZERS)
def test_output_losses_are_fp32_under_bf16_autocast(name):
    norm = make_normalizer(overlay(name)["output_normalizer"])
    logits = torch.randn(6, 11) * 3
    target = torch.randint(0, 11, (6,))
    half = logits.bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = norm.loss(half, target, label_smoothing=0.1)
    loss.backward()
    up = half.detach().float().requires_grad_()
    ref = norm.loss(up, target, label_smoothing=0.1)  # fp32, no autocast
    ref.backward()
    assert loss.dtype == torch.float32 and torch.equal(loss, ref)
    assert half.grad.dtype == torch.bfloat16 and torch.equal(half.grad, up.grad.bfloat16())
    # Only the bf16 rounding of the logits separates it from the fp32 loss.
    exact = norm.loss(logits, target, label_smoothing=0.1)
    assert loss.item() == pytest.approx(exact.item(), rel=2e-2, abs=2e-2)


# ---- CUDA: 16-mixed (skipped without CUDA) -------------------------------------------------

GPU_CELLS = [("vit", "softmax"), ("vit", "multimax"), ("vit", "sparsemax"), ("lm", "multimax"),
             ("lm", "entmax"), ("mt", "softmax"), ("mt", "entmax15")]


@pytest.mark.gpu
@pytest.mark.parametrize("task, name", GPU_CELLS, ids=[f"{t}-{n}" for t, n in GPU_CELLS])
def test_16_mixed_training_on_cuda_gives_finite_losses(task, name, tmp_path):
    cli, rows = fit(task, name, tmp_path, "16-mixed",
                    extra=("--trainer.accelerator=gpu", "--trainer.devices=1"))
    check_finite_run(cli, rows)


@pytest.mark.gpu
@pytest.mark.parametrize("task", list(CONFIGS))
@pytest.mark.parametrize("name", NORMALIZERS)
def test_normalizers_compute_in_fp32_under_fp16_autocast_on_cuda(task, name):
    net, inputs = build(task, name)
    net, inputs = net.cuda(), tuple(x.cuda() for x in inputs)
    with record_normalizers(net) as calls, torch.autocast("cuda", dtype=torch.float16):
        logits = net(*inputs)
        logits = logits[0] if isinstance(logits, tuple) else logits
        loss = net.output_normalizer.loss(logits, torch.randint(0, logits.shape[-1], logits.shape[:-1],
                                                                device="cuda"))
    assert calls and loss.dtype == torch.float32 and torch.isfinite(loss)
    assert_computed_in_fp32(calls, torch.float16)


@pytest.mark.gpu
@pytest.mark.parametrize("causal", [False, True])
def test_multimax_attention_takes_the_fused_kernel_under_fp16_autocast(causal, monkeypatch):
    from mmkit.nn.attention import attend

    norm = MultiMax().cuda()
    with torch.no_grad():  # away from the identity, so σ matters
        norm.ranges.normal_(0.0, 0.5)
        norm.ts.normal_(0.0, 0.3)
    used: list[bool] = []
    kernel = kernels.multimax_attention

    def spy(*args, **kwargs):
        out = kernel(*args, **kwargs)
        used.append(out is not None)
        return out

    monkeypatch.setattr(kernels, "multimax_attention", spy)
    q, k, v = (torch.randn(2, 2, 64, 32, device="cuda").half().requires_grad_() for _ in range(3))
    with torch.autocast("cuda", dtype=torch.float16):
        out = attend(q, k, v, norm, causal=causal)
    assert used == [True] and out.dtype == torch.float16
    out.float().square().sum().backward()
    got = [t.grad.float() for t in (q, k, v)] + [norm.ranges.grad.clone(), norm.ts.grad.clone()]
    norm.zero_grad()
    # Reference: the materialized path in fp32 on the same fp16 inputs.
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    keep = torch.ones(64, 64, dtype=torch.bool, device="cuda").tril() if causal else None
    ref = norm((q32 @ k32.transpose(-2, -1)) * 32 ** -0.5, mask=keep) @ v32
    ref.square().sum().backward()
    want = [q32.grad, k32.grad, v32.grad, norm.ranges.grad, norm.ts.grad]
    torch.testing.assert_close(out.float(), ref, atol=3e-3, rtol=1e-2)
    for g, w in zip(got, want):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g, w, atol=2e-2, rtol=2e-2)
