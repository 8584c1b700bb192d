"""Float comparisons with tolerances scaled to the values compared.

Results computed in different summation orders differ by a few ulps of the largest terms that entered
them, not of each element, so the absolute tolerance is `rtol` times the expected tensor's largest
magnitude (never zero).
"""

import torch


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-12) -> None:
    scale = max(expected.abs().max().item(), torch.finfo(expected.dtype).tiny) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * scale)
