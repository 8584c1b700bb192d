"""ntn: Newton-based training of tensor networks (MPO2, LMPO2, MMPO2) with pluggable experiment tracking.

The models and the trainer are imported on first use, so that `ntn.tracking` (and the `ntn-trackers`
command) start without loading torch.
"""

from importlib import import_module
from typing import Any

__version__ = "0.1.0"
_EXPORTS = {
    "LMPO2": "ntn.models",
    "MMPO2": "ntn.models",
    "MPO2": "ntn.models",
    "TensorNetwork": "ntn.models",
    "load_model": "ntn.saving",
    "save_model": "ntn.saving",
    "NTN": "ntn.trainer",
    "NewtonStepError": "ntn.trainer",
    "jitter_schedule": "ntn.trainer",
    "resolve_device": "ntn.trainer",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ntn' has no attribute {name!r}")
