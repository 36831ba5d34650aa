"""Lhotse Shar export: sharded cuts + flac audio that NeMo's Lhotse dataloader reads via ``shar_path``."""

from __future__ import annotations

from pathlib import Path


def export_shar(cuts_path: str | Path, out_dir: str | Path, shard_size: int = 1000) -> Path:
    """Write ``out_dir`` afresh (it is this split's Shar output, nothing else's)."""
    import shutil

    from lhotse import CutSet

    out_dir = Path(out_dir)
    if out_dir.exists():  # shards of an earlier run would be read back together with these
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    cuts = CutSet.from_file(cuts_path)
    cuts.to_shar(out_dir, fields={"recording": "flac"}, shard_size=shard_size)
    print(f"Shar shards written to {out_dir} (point data.train / shar_path at it)")
    return out_dir
