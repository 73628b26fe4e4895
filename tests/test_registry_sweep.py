"""Every registered normalizer, swept: shape, dtype, range, no NaN, determinism, save/load, batching.

New normalizers join automatically (parametrized over ``NORMALIZERS.names()``). Opt-outs, read
from the class with ``getattr`` so no base-class change is needed:

* ``sweep_fit_cost = "heavy"`` (class attribute): fitting takes too long for a unit sweep
  (trained networks); such methods are covered by their own tests.
* ``sweep_unavailable()`` (classmethod returning ``None`` or a reason string): resources the fit
  needs are absent (weights, a GPU, an optional package); the method is skipped with the reason.
"""

from __future__ import annotations

import pytest
import torch

from cellbench.data.sets import PairedSet, as_unpaired
from cellbench.methods import NORMALIZERS, create_normalizer, load_normalizer

from .smears import toy_smears


def sweep_skip_reason(name: str) -> str | None:
    cls = NORMALIZERS.get(name)
    if getattr(cls, "sweep_fit_cost", "light") == "heavy":
        return f"{name}: sweep_fit_cost == 'heavy' (tested by its own tests)"
    hook = getattr(cls, "sweep_unavailable", None)
    return hook() if callable(hook) else None


@pytest.fixture(scope="module")
def pairs() -> PairedSet:
    """Small synthetic paired set: constructed smears and a nonlinear per-channel 'system Y'."""
    x, masks = toy_smears(6, 48, seed=11, noise=0.02, texture=0.1)
    y = (0.9 * x**1.2 + torch.tensor([0.05, 0.0, 0.03]).view(1, 3, 1, 1)).clamp(0, 1)
    return PairedSet(x=x, y=y, labels=["neutrophil", "lymphocyte"] * 3, masks=masks)


@pytest.fixture(scope="module")
def probe() -> torch.Tensor:
    """Held-out images, including hard cases: all background, saturated, black, no WBC."""
    x, _ = toy_smears(3, 48, seed=12, noise=0.02, texture=0.1)
    nowbc, _ = toy_smears(1, 48, seed=13, wbc=False)
    return torch.cat([x, nowbc, torch.full((1, 3, 48, 48), 0.93), torch.ones(1, 3, 48, 48),
                      torch.zeros(1, 3, 48, 48)])


_fitted: dict[str, object] = {}


def fitted(name: str, pairs: PairedSet):
    reason = sweep_skip_reason(name)
    if reason:
        pytest.skip(reason)
    if name not in _fitted:
        _fitted[name] = create_normalizer(name).fit(pairs, seed=0)
    return _fitted[name]


@pytest.mark.parametrize("name", NORMALIZERS.names())
def test_output_contract(name, pairs, probe):
    norm = fitted(name, pairs)
    out = norm.transform(probe)
    assert out.shape == probe.shape
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert out.min() >= 0 and out.max() <= 1
    # the input is not modified in place
    assert torch.isfinite(probe).all() and probe[-1].eq(0).all() and probe[-2].eq(1).all()


@pytest.mark.parametrize("name", NORMALIZERS.names())
def test_deterministic(name, pairs, probe):
    norm = fitted(name, pairs)
    assert torch.equal(norm.transform(probe), norm.transform(probe))
    if NORMALIZERS.get(name).needs_fit:
        again = create_normalizer(name).fit(pairs, seed=0)
        assert torch.equal(norm.transform(probe), again.transform(probe))


@pytest.mark.parametrize("name", NORMALIZERS.names())
def test_save_load_round_trip_identical(name, pairs, probe, tmp_path):
    norm = fitted(name, pairs)
    norm.save(tmp_path / name)
    again = load_normalizer(tmp_path / name)
    assert type(again) is type(norm)
    assert torch.equal(norm.transform(probe), again.transform(probe))


@pytest.mark.parametrize("name", NORMALIZERS.names())
def test_batched_equals_one_by_one(name, pairs, probe):
    norm = fitted(name, pairs)
    batched = norm.transform(probe)
    single = torch.cat([norm.transform(probe[i:i + 1]) for i in range(len(probe))])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", NORMALIZERS.names())
def test_unpaired_methods_fit_unpaired_data(name, pairs, probe):
    cls = NORMALIZERS.get(name)
    if "unpaired" not in cls.data_kinds:
        pytest.skip(f"{name} is paired-only")
    if sweep_skip_reason(name):
        pytest.skip(sweep_skip_reason(name))
    out = create_normalizer(name).fit(as_unpaired(pairs), seed=0).transform(probe)
    assert torch.isfinite(out).all() and out.shape == probe.shape
