"""The classification task's parameter groups, schedule, loss and metrics."""

import math

import pytest
import torch

from mmkit.models import VisionTransformer
from mmkit.tasks import ImageClassification, param_groups, warmup_cosine


def vit(**kw):
    kw.setdefault("drop_path_rate", 0.0)
    return VisionTransformer("test", img_size=8, patch_size=4, in_chans=1, num_classes=6, **kw)


def test_param_groups_exclude_norms_biases_positions_and_normalizers():
    model = vit(normalizer="multimax", per_head=True, output_normalizer="multimax", pool="cls")
    decay, no_decay = param_groups(model)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    skipped = {names[id(p)] for p in no_decay["params"]}
    assert no_decay["weight_decay"] == 0.0 and "weight_decay" not in decay
    assert decayed | skipped == set(names.values()) and not decayed & skipped
    assert {"pos_embed", "cls_token", "norm.weight", "head.bias", "output_normalizer.ranges",
            "blocks.0.attn.normalizer.ranges", "blocks.0.attn.normalizer.ts"} <= skipped
    assert model.blocks[0].attn.normalizer.ranges.ndim == 2  # per-head, still skipped
    assert decayed == {n for n in names.values()
                       if n.endswith("weight") and "norm" not in n}


def test_warmup_cosine_schedule():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_cosine(opt, warmup_steps=4, total_steps=14, min_lr_ratio=0.1)
    lrs = []
    for _ in range(15):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[4] == pytest.approx(1.0) and lrs[9] == pytest.approx(0.1 + 0.9 * 0.5)
    assert lrs[14] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))
    with pytest.raises(ValueError, match="total_steps"):
        warmup_cosine(opt, 1, 0)


@pytest.mark.parametrize("name", ["softmax", "sparsemax", "multimax"])
def test_loss_is_the_output_normalizers_loss(name):
    task = ImageClassification(vit(output_normalizer=name), label_smoothing=0.1)
    x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 6, (4,))
    task.log = lambda *a, **k: None
    loss = task.training_step((x, y), 0)
    expected = task.network.output_normalizer.loss(task(x), y, label_smoothing=0.1)
    assert torch.allclose(loss, expected)


def test_mixup_and_cutmix_give_soft_targets_and_finite_loss():
    task = ImageClassification(vit(output_normalizer="entmax15"), mixup_alpha=0.8, cutmix_alpha=1.0)
    task.log = lambda *a, **k: None
    images, labels = torch.randn(8, 1, 8, 8), torch.arange(8) % 6
    mixed, target = task.mix(images, labels)
    assert target.shape == (8, 6) and torch.allclose(target.sum(-1), torch.ones(8))
    assert not torch.equal(mixed, images)
    assert math.isfinite(task.training_step((images, labels), 0).item())


def test_bad_task_arguments():
    with pytest.raises(ValueError, match="label_smoothing"):
        ImageClassification(vit(), label_smoothing=1.0)
    with pytest.raises(ValueError, match="num_classes"):
        ImageClassification(torch.nn.Linear(3, 3))


@pytest.mark.parametrize("max_steps", [4, -1])
def test_warmup_epochs_counts_the_epoch_even_when_max_steps_is_set(max_steps, tmp_path):
    # With max_steps and no max_epochs, Lightning has no epoch length when the schedule
    # is built (this used to raise OverflowError); 12 images in batches of 4 = 3 steps.
    from lightning.pytorch import Trainer
    from torch.utils.data import DataLoader, TensorDataset

    data = TensorDataset(torch.randn(12, 1, 8, 8), torch.randint(0, 6, (12,)))
    task = ImageClassification(vit(), warmup_epochs=1.0)
    trainer = Trainer(accelerator="cpu", max_steps=max_steps, max_epochs=None if max_steps > 0 else 2,
                      logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=str(tmp_path))
    trainer.fit(task, DataLoader(data, batch_size=4))
    schedule = trainer.lr_scheduler_configs[0].scheduler
    assert trainer.global_step == (4 if max_steps > 0 else 6)
    assert [schedule.lr_lambdas[0](s) for s in range(3)] == pytest.approx([1 / 3, 2 / 3, 1.0])
