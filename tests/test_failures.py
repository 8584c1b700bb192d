"""What a closing line says of failed runs (`experiments.failures`)."""

from experiments.failures import fails_again, reasons


def _failed(seed: int, error: str, **extra) -> dict:
    return {"seed": seed, "success": False, "error": error} | extra


def test_a_training_failure_fails_again_and_a_failure_from_outside_training_may_pass():
    assert fails_again(_failed(0, "collapsed: MPO2 predicts (almost) a constant"))
    assert fails_again(_failed(0, "LinAlgError: singular system"))
    assert not fails_again(_failed(0, "the worker process training it ended with exit code -9"))
    assert not fails_again(_failed(0, "OutOfMemoryError: CUDA out of memory"))
    lost = _failed(0, "tracker 'aim' failed in finalize: gone", records_incomplete_in=["aim"])
    assert not fails_again(lost)


def test_reasons_group_one_error_whatever_its_numbers_most_common_first():
    failed = [
        ("a", _failed(0, "collapsed (test r2 -0.020)")),
        ("a", _failed(1, "collapsed (test r2 -0.031)")),
        ("b", _failed(0, "ValueError: bad")),
    ]
    assert reasons(failed) == 'a seeds 0, 1: "collapsed (test r2 -0.020)"; b seed 0: "ValueError: bad"'
    assert reasons(failed, shown=1) == 'a seeds 0, 1: "collapsed (test r2 -0.020)"; 1 other error'
    assert reasons([("", _failed(3, "x"))]) == 'seed 3: "x"'
    across = [("a", _failed(0, "x")), ("b", _failed(0, "x")), ("c", _failed(1, "x"))]
    assert reasons(across) == 'a seed 0 and 2 other runs: "x"'
