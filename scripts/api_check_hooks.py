"""Schemathesis hooks for scripts/api-check.

Every valid room name schemathesis generates gets this run's prefix
(API_CHECK_ROOM_PREFIX), cut back to 64 characters, so that runs do not pile
their posts into the same few rooms ("0", "00", ...) of the machine's
RabbitMQ: a read of such a room from `since=0` is older than the bridge's
room index and scans the partition, which grows with every run. Invalid
names (the negative cases) are sent as generated.
"""

import os
import re

import schemathesis

PREFIX = os.environ["API_CHECK_ROOM_PREFIX"]
ROOM = re.compile(r"[a-z0-9_-]{1,64}")


@schemathesis.hook
def map_case(context, case):
    room = (case.path_parameters or {}).get("room")
    if isinstance(room, str) and ROOM.fullmatch(room) and not room.startswith(PREFIX):
        case.path_parameters["room"] = (PREFIX + room)[:64]
    return case
