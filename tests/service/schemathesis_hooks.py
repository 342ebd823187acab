"""What `schemathesis run` needs to know of this API beyond its OpenAPI description; loaded
through ``hooks`` in schemathesis.toml.

A data set upload is a .tar.gz (``application/gzip``), which Schemathesis cannot make from a
JSON schema: make small archives of one to three files, as a user would send.
"""

from __future__ import annotations

import io
import tarfile

import schemathesis
from hypothesis import strategies as st


def _archive(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            member = tarfile.TarInfo(name)
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    return buffer.getvalue()


_names = st.from_regex(r"(train|test)/[a-z]{1,6}/[a-z0-9]{1,8}\.png", fullmatch=True)
schemathesis.openapi.media_type(
    "application/gzip",
    st.dictionaries(_names, st.binary(max_size=64), min_size=1, max_size=3).map(_archive),
)
