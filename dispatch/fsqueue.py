"""The embedded queue: Celery's file-system transport, with priorities.

kombu's transport names each message file by the time it was sent and hands out the first
file in name order, so it serves in arrival order whatever the priority. Here the name starts
with the message's priority as Celery sets it (0 first, as Redis serves it; the publisher maps
the API's 9 to 0), so that the higher API priority is taken first and arrival breaks ties.
"""

from __future__ import annotations

import os
import uuid
from time import monotonic_ns

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


class Channel(filesystem.Channel):
    def _put(self, queue, payload, **kwargs):
        priority = self._get_message_priority(payload)
        # ``<priority>_<ns>_<uuid>.<queue>.msg``: kombu finds a queue's files by what follows the first dot.
        name = f"{priority}_{monotonic_ns():020d}_{uuid.uuid4()}.{queue}.msg"
        path = os.path.join(self.data_folder_out, name)
        try:
            with open(path, "wb", buffering=0) as f:
                filesystem.lock(f, filesystem.LOCK_EX)
                try:
                    f.write(str_to_bytes(dumps(payload)))
                finally:
                    filesystem.unlock(f)
        except OSError as exc:
            raise ChannelError(f"Cannot add file {path!r} to directory") from exc


class Transport(filesystem.Transport):
    Channel = Channel
