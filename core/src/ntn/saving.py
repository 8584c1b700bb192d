"""Trained models on disk: `save_model(model, path)`, and `load_model(path)` to get the same model back.

The file (torch.save) holds the model's factory and arguments (`model.recipe`: MPO2, LMPO2 or MMPO2) and
its cores, nothing else: it loads with torch's `weights_only=True`, so loading a file runs no code.
"""

from __future__ import annotations

from os import PathLike

import torch

from ntn.models import LMPO2, MMPO2, MPO2, TensorNetwork

FORMAT = "ntn-model/1"
FACTORIES = {"MPO2": MPO2, "LMPO2": LMPO2, "MMPO2": MMPO2}


def save_model(model: TensorNetwork, path: str | PathLike) -> None:
    """Write `model` (built by MPO2, LMPO2 or MMPO2, trained or not) to `path`."""
    if model.recipe.get("model") not in FACTORIES:
        raise ValueError("only models built by MPO2, LMPO2 or MMPO2 can be saved (their recipe rebuilds them)")
    torch.save({"format": FORMAT, "recipe": dict(model.recipe), "cores": [c.cpu() for c in model.state()]}, path)


def load_model(path: str | PathLike, device: str | torch.device = "cpu") -> TensorNetwork:
    """The model saved at `path`, its cores on `device`; it predicts as the saved one did: `model(phi)`."""
    saved = torch.load(path, map_location=device, weights_only=True)
    if not isinstance(saved, dict) or saved.get("format") != FORMAT:
        raise ValueError(f"{path}: not a model saved by ntn.save_model")
    recipe = dict(saved["recipe"])
    model = FACTORIES[recipe.pop("model")](**recipe)
    cores = saved["cores"]
    model.to(cores[0].device, cores[0].dtype)
    model.load_state(cores)
    return model
