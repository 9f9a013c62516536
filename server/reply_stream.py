"""A round's replies, pulled from the Grid one at a time: the coordinator never holds more than
one site's update that it has not yet folded into the aggregate (:mod:`server.round_fold`).

Flower's ``Grid.send_and_receive`` returns every reply together, so the coordinator's memory grew
with the number of sites. Here the messages are pushed, then their replies are pulled by message
id, one id per request, in a fixed order (the order of ``order``'s keys, e.g. the sites'
registered names), so the aggregate does not depend on the order in which sites finish. A reply
that arrives before its turn waits at the SuperLink, which keeps it in its database on disk
(``retina-server superlink --state-dir``). Once the deadline passes, every reply that arrived by
then is still pulled, in the same order; the others count as silent.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from flwr.app import Message
from flwr.serverapp import Grid

POLL_SECONDS = 0.5  # between two requests for a reply that has not arrived yet


def stream_replies(grid: Grid, messages: list[Message], timeout: float, order: Callable[[Message], str],
                   poll: float = POLL_SECONDS) -> Iterator[Message]:
    """Push ``messages`` and yield their replies one by one, ``messages`` sorted by ``order``,
    waiting at most ``timeout`` s in all."""
    deadline = time.monotonic() + timeout
    ids = list(grid.push_messages(messages))
    pending = [message_id for _, message_id in sorted(
        ((order(msg), message_id) for msg, message_id in zip(messages, ids, strict=True) if message_id))]
    while pending:
        replies = list(grid.pull_messages([pending[0]]))
        if replies:
            pending.pop(0)
            yield replies[0]
        elif time.monotonic() >= deadline:
            break
        else:
            time.sleep(poll)
    for message_id in pending:  # past the deadline: what has arrived still counts
        yield from grid.pull_messages([message_id])
