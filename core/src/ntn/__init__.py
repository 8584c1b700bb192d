"""ntn: Newton-based training of tensor networks (MPO2, LMPO2, MMPO2) with pluggable experiment tracking."""

from ntn.models import LMPO2, MMPO2, MPO2, TensorNetwork
from ntn.trainer import NTN, NewtonStepError, jitter_schedule

__all__ = ["LMPO2", "MMPO2", "MPO2", "NTN", "NewtonStepError", "TensorNetwork", "jitter_schedule"]
__version__ = "0.1.0"
