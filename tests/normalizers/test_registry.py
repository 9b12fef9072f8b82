import pytest
import torch

from mmkit.normalizers import NORMALIZERS, MultiMax, Normalizer, SoftMax, build_normalizer


def test_build_by_name_and_class_path():
    for name, cls in NORMALIZERS.items():
        assert type(build_normalizer(name)) is cls
        assert type(build_normalizer(f"{cls.__module__}.{cls.__name__}")) is cls
    norm = build_normalizer("mmkit.normalizers.MultiMax", order=3, num_heads=2)
    assert isinstance(norm, MultiMax) and norm.ranges.shape == (2, 6)


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="softmax, sparsemax, entmax15, entmax, multimax, evsoftmax"):
        build_normalizer("sparsemaks")
    with pytest.raises(ValueError, match="cannot import"):
        build_normalizer("mmkit.normalizers.Nope")
    with pytest.raises(ValueError, match="not a subclass"):
        build_normalizer("torch.nn.Linear")
    with pytest.raises(ValueError, match="bad arguments"):
        build_normalizer("softmax", alpha=2)


def test_bad_constructor_values_are_clear():
    for name, kw, msg in [("multimax", {"order": 0}, "order"), ("entmax", {"alpha": 1.0}, "alpha"),
                          ("entmax", {"alpha": 2.5, "learnable": True}, "learnable"),
                          ("evsoftmax", {"eps": 0}, "eps"), ("multimax", {"num_heads": 0}, "num_heads")]:
        with pytest.raises(ValueError, match=msg):
            build_normalizer(name, **kw)


def test_contract_flags_and_no_decay_parameters():
    assert SoftMax.is_modulated_softmax and MultiMax.is_modulated_softmax
    sparse = ("sparsemax", "entmax15", "entmax", "evsoftmax")
    assert not any(NORMALIZERS[n].is_modulated_softmax for n in sparse)
    mm = MultiMax()
    assert mm.ranges.shape == mm.ts.shape == (4,)
    assert {id(p) for p in mm.no_decay_parameters()} == {id(mm.ranges), id(mm.ts)}
    assert mm.ranges.abs().max() < 0.1  # trunc_normal(std=0.02): σ starts near identity
    assert build_normalizer("sparsemax").no_decay_parameters() == []
    assert isinstance(build_normalizer("softmax"), Normalizer)
    x = torch.randn(3, 5)
    assert torch.allclose(mm.modulate(x), x, atol=0.5)


def test_yaml_class_path_builds_a_normalizer(tmp_path):
    """Configs name a normalizer by class path with init_args, as LightningCLI will."""
    from jsonargparse import ArgumentParser

    cfg = tmp_path / "norm.yaml"
    cfg.write_text("normalizer:\n  class_path: mmkit.normalizers.MultiMax\n"
                   "  init_args:\n    order: 3\n    num_heads: 2\n")
    parser = ArgumentParser()
    parser.add_argument("--config", action="config")
    parser.add_argument("--normalizer", type=Normalizer)
    init = parser.instantiate(parser.parse_args(["--config", str(cfg)]))
    assert isinstance(init.normalizer, MultiMax) and init.normalizer.ranges.shape == (2, 6)
