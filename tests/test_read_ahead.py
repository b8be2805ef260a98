"""kpconv.model.predict.read_ahead: items produced in a thread into a bounded queue."""
import threading

import pytest

from kpconv.errors import VideoError
from kpconv.model.predict import read_ahead


def test_items_in_order_and_bounded():
    produced = []

    def items():
        for i in range(100):
            produced.append(i)
            yield i

    got = []
    for x in read_ahead(items(), maxsize=4):
        got.append(x)
        assert len(produced) <= len(got) + 4 + 1   # at most the queue and the one being put ahead
    assert got == list(range(100))


def test_the_producers_error_is_raised_where_its_item_would_come():
    def items():
        yield 1
        yield 2
        raise VideoError("unreadable_video", "cannot decode")

    got = []
    with pytest.raises(VideoError, match="cannot decode"):
        for x in read_ahead(items(), maxsize=2):
            got.append(x)
    assert got == [1, 2]


def test_leaving_early_stops_and_closes_the_producer():
    closed = threading.Event()

    def items():
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.set()

    for x in read_ahead(items(), maxsize=2):
        if x == 3:
            break
    assert closed.wait(5)
