"""The Server-Sent Events reader (cli/sse.py) on a stream written by hand."""

from cli.sse import parse_events


def test_events_are_read_with_their_ids_and_data_and_comments_are_passed_over():
    stream = [
        ": keep-alive",
        "",
        "id: 1",
        "event: state",
        'data: {"status": "running"}',
        "",
        "event: end",
        "",
        "id: 2",
        "event:progress",
        'data:{"step": 3}',
        "",
        "retry: 1000",
        "",
        "event: cut",  # no closing blank line: the event is not complete
    ]
    assert list(parse_events(stream)) == [
        {"id": 1, "event": "state", "data": {"status": "running"}},
        {"id": None, "event": "end", "data": {}},
        {"id": 2, "event": "progress", "data": {"step": 3}},
    ]


def test_reading_stops_where_the_caller_stops():
    lines = iter(["event: a", "data: {}", "", "event: b", "data: {}", ""])
    events = parse_events(lines)
    assert next(events)["event"] == "a"
    assert list(lines) == ["event: b", "data: {}", ""]  # nothing read ahead of the first event
