from itertools import islice

from pipeline.worker.backoff import exponential, steps


def test_exponential_doubles_up_to_its_ceiling_and_never_below_its_floor() -> None:
    assert list(islice(exponential(0.5, 5.0), 6)) == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    assert list(islice(exponential(0.01, 1.0, least=0.1), 4)) == [0.1, 0.1, 0.1, 0.1]


def test_steps_repeat_the_last_pause_forever() -> None:
    assert list(islice(steps((0.5, 1, 2)), 6)) == [0.5, 1, 2, 2, 2, 2]
