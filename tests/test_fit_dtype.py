"""The ``final`` objective's fit in float32: same fit as float64 up to float32 rounding."""

import pytest
import torch

import dode
from dode.models import load_model


def test_float32_fit_agrees_with_float64():
    model = load_model("mixture-smooth")
    noise = torch.randn(48, *model.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sigmas = dode.karras_sigmas(4, 0.002, 80.0)
    fits = {dtype: dode.distill(model.denoiser, noise, sigmas, "euler", fit={
        "guard": False, "objective": "final", "options": {"iterations": 6, "eval_every": 2, "dtype": dtype,
                                                          "init": "zero"}})
            for dtype in ("float64", "float32")}
    a, b = fits["float64"], fits["float32"]
    assert a.fit["best_iteration"] == b.fit["best_iteration"] > 0
    torch.testing.assert_close(torch.tensor(b.values), torch.tensor(a.values), rtol=0, atol=1e-4)
    torch.testing.assert_close(torch.tensor(b.sigmas), torch.tensor(a.sigmas), rtol=1e-4, atol=1e-6)
    assert a.values != b.values  # the float32 path really ran in float32


def test_unknown_dtype_is_one_value_error():
    model = load_model("mixture-smooth")
    with pytest.raises(ValueError, match="dtype"):
        dode.distill(model.denoiser, torch.randn(8, *model.shape), dode.karras_sigmas(3, 0.002, 80.0), "euler",
                     fit={"objective": "final", "options": {"dtype": "float16"}})
