"""Reading an offline W&B run back (for tests): the history rows of a ``run-*.wandb`` file, without network or the
W&B service."""

from __future__ import annotations

from pathlib import Path


def read_offline_history(wandb_file: str | Path) -> list[dict]:
    """The history rows of an offline W&B run (``run-*.wandb``), without network or the W&B service.

    The file is W&B's 7-byte header followed by LevelDB-log framed protobuf ``Record`` messages
    (32 KiB blocks; each fragment has a 7-byte header: crc32c, length, type FULL/FIRST/MIDDLE/LAST).
    """
    import json
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(wandb_file).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{wandb_file} is not a W&B run file")
    block, pos, pending, rows = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer too small for a header: skipped
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0:  # zero padding to the end of a block
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = pb.Record()
            record.ParseFromString(pending)
            if record.WhichOneof("record_type") == "history":
                rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                             for item in record.history.item})
    return rows
