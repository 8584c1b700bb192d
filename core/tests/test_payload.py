import math
import pathlib

import numpy as np
import torch
from ntn.tracking.redact import Redactor


def test_payloads_are_made_plain_and_keep_nonfinite_floats():
    value = {
        1: np.float32(0.5),
        "int": np.int64(7),
        "array": np.arange(3),
        "tensor": torch.tensor([1.5, 2.5]),
        "scalar_tensor": torch.tensor(math.inf),
        "path": pathlib.Path("/tmp/x"),
        "nested": ({"t": (1, 2)}, {3}),
        "nan": math.nan,
        "object": object,
    }
    out = Redactor({})(value)
    assert out["1"] == 0.5 and out["int"] == 7 and type(out["int"]) is int
    assert out["array"] == [0, 1, 2] and out["tensor"] == [1.5, 2.5] and out["scalar_tensor"] == math.inf
    assert out["path"] == "/tmp/x" and out["nested"] == [{"t": [1, 2]}, [3]]
    assert math.isnan(out["nan"]) and out["object"] == "<class 'object'>"
