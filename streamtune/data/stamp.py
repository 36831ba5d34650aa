"""Skip work already done: a stamp file in the output dir holds a key of the inputs and options that made it.

The stamp is removed before the work starts and written only after it finished, so a crashed or interrupted
run (with these options or others) never leaves outputs that look done.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def key_of(*parts) -> str:
    """A stable key of anything JSON can show (paths, numbers, option dicts, file stats)."""
    return hashlib.sha256(json.dumps(parts, default=str, sort_keys=True).encode()).hexdigest()


class Stamp:
    def __init__(self, out_dir: str | Path, name: str):
        self.path = Path(out_dir) / f".{name}.done"

    def up_to_date(self, key: str, outputs=()) -> bool:
        """True when the last finished run had this key and its outputs are all still there."""
        return self.path.is_file() and self.path.read_text() == key and all(Path(p).exists() for p in outputs)

    def start(self) -> None:
        """Work begins: whatever is in the output dir no longer counts as done."""
        self.path.unlink(missing_ok=True)

    def done(self, key: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(key)
