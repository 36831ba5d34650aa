"""``train.py --dry-run``: build the model, push one real batch through a training step, report, write nothing."""

from __future__ import annotations

import resource
import time


def dry_run(cfg) -> str:
    import torch

    from streamtune.model.build import build_model, joint_forward

    model = build_model(cfg)
    model.train()
    rows = ["| module | parameters | trainable |", "|---|---|---|"]
    total = trainable = 0
    for name, module in model.named_children():
        n = sum(p.numel() for p in module.parameters())
        t = sum(p.numel() for p in module.parameters() if p.requires_grad)
        if n:
            rows.append(f"| {name} | {n:,} | {t:,} |")
        total, trainable = total + n, trainable + t
    rows.append(f"| **total** | **{total:,}** | **{trainable:,}** |")
    batch = next(iter(model.train_dataloader()))
    audio, audio_len = batch[0], batch[1]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    start = time.perf_counter()
    joint, tokens, encoded_len, target_len = joint_forward(model, batch)
    loss = model.loss(log_probs=joint, targets=tokens, input_lengths=encoded_len, target_lengths=target_len)
    loss.backward()
    optimizer.step()
    step_s = time.perf_counter() - start
    # fp32 weights + grads + two AdamW moments.
    states_mib = 4 * 4 * trainable / 2**20
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    lines = [
        f"model {type(model).__name__}: {total:,} parameters ({trainable:,} trainable)",
        "\n".join(rows),
        f"one batch: {audio.shape[0]} utterances, {float(audio_len.sum()) / cfg.model.sample_rate:.1f} s of audio, "
        f"joint tensor {tuple(joint.shape)} ({joint.numel() * 4 / 2**20:.0f} MiB), loss {float(loss):.2f}, "
        f"step {step_s:.2f} s",
        f"memory: weights+grads+AdamW states {states_mib:.0f} MiB; process peak RSS {peak_mib:.0f} MiB",
        "dry run: nothing written",
    ]
    if torch.cuda.is_available():
        lines.insert(-1, f"GPU peak allocated {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")
    return "\n".join(lines)
