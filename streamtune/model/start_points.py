"""Start points and adaptation modes for fine-tuning.

``model.init_from`` names a local ``.nemo`` (RNN-T or hybrid RNNT-CTC), a
Lightning ``.ckpt``, or a model on the Hugging Face hub
(``nvidia/nemotron-speech-streaming-en-0.6b``, found through NeMo's own
``from_pretrained`` and the hub cache, so ``HF_HUB_OFFLINE=1`` works from a
filled cache). The recipe's ``model`` section is laid over the config the
start point carries: recipe values win (data, optimiser, SpecAugment, loss,
context sizes and probabilities), the architecture must stay the same, and
every change is reported. The start point's tokenizer is kept unless
``model.tokenizer_dir`` names a new one: then NeMo's ``change_vocabulary``
rebuilds the prediction net and joint, and we rebuild the loss from the config
(NeMo's rebuild silently resets FastEmit and the loss type to defaults).

``model.init_include`` / ``model.init_exclude`` (module prefixes, e.g. ``[encoder]``) load only part of the
start point, as NeMo's ``init_from_nemo_model`` does: the model is built fresh from the merged config and the
selected tensors are copied in; the rest keeps its fresh initialisation (and may change shape).
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from streamtune.errors import UserError
from streamtune.model.nemo_config import finalise_contexts, model_class, recipe_model_section, support_adapters

# Sections the recipe replaces whole instead of merging key by key (a new scheduler must not
# inherit the old one's arguments; datasets are always ours).
REPLACED = ("optim", "train_ds", "validation_ds", "test_ds")
# Sections instantiated as NeMo modules: a key they do not have is a typo, not an addition.
MODULES = ("preprocessor", "encoder", "decoder", "joint", "spec_augment")
MODES = ("full", "frozen_encoder", "adapters")
ADAPTER_NAME = "streamtune"


def _flatten(node, prefix: str = "") -> dict:
    if isinstance(node, DictConfig):
        out = {}
        for key in node.keys():
            out.update(_flatten(node.get(key), f"{prefix}{key}."))
        return out or {prefix[:-1]: {}}
    return {prefix[:-1]: OmegaConf.to_container(node) if OmegaConf.is_config(node) else node}


def config_changes(before: DictConfig, after: DictConfig) -> list[tuple[str, object, object]]:
    """``(key, before, after)`` for every leaf that differs; a missing side is ``"<absent>"``."""
    a, b = _flatten(before), _flatten(after)
    absent = "<absent>"
    return [(k, a.get(k, absent),
             b.get(k, absent)) for k in sorted(set(a) | set(b)) if a.get(k, absent) != b.get(k, absent)]


def merge_onto_base(base: DictConfig, overlay: DictConfig, where: str) -> DictConfig:
    """Lay the recipe's model section over a start point's config (see module doc for the rules)."""
    merged = OmegaConf.create(OmegaConf.to_container(base, resolve=True))
    for key in overlay.keys():
        value = overlay.get(key)
        if key in REPLACED or key not in merged or not isinstance(value, DictConfig) \
                or not isinstance(merged.get(key), DictConfig):
            with open_dict(merged):
                merged[key] = value
            continue
        if key in MODULES:
            known = set(_flatten(merged[key], f"{key}."))
            unknown = sorted(set(_flatten(value, f"{key}.")) - known)
            # A whole new sub-dict is one flattened key per leaf; only complain about leaves whose parent exists.
            unknown = [k for k in unknown if k.rsplit(".", 1)[0] in _parents(merged[key], key)]
            if unknown:
                close = difflib.get_close_matches(unknown[0], sorted(known), n=3, cutoff=0.6)
                hint = f" Did you mean {', '.join('model.' + c for c in close)}?" if close else ""
                raise UserError(f"recipe sets model.{unknown[0]}, which the model in {where} does not have.{hint}")
        merged[key] = OmegaConf.merge(merged[key], value)
    return merged


def _parents(node: DictConfig, prefix: str) -> set[str]:
    out = {prefix}
    for key in node.keys():
        value = node.get(key)
        if isinstance(value, DictConfig):
            out |= _parents(value, f"{prefix}.{key}")
    return out


def describe_changes(changes, where: str) -> str:
    if not changes:
        return f"init_from {where}: the recipe changes nothing in its model config"
    lines = [f"init_from {where}: the recipe overrides {len(changes)} model config value(s):"]
    lines += [f"  model.{key}: {old!r} -> {new!r}" for key, old, new in changes]
    return "\n".join(lines)


def _base_config(path: Path):
    """(config, loader) of a start point: a .nemo archive or a Lightning checkpoint made by NeMo."""
    if path.suffix == ".ckpt":
        from streamtune.model.checkpoints import checkpoint_config, load_checkpoint

        ckpt = load_checkpoint(path)  # refuses one that would run code
        return checkpoint_config(ckpt, path), ckpt  # refuses a config naming classes outside the allow-list
    from nemo.collections.asr.models import ASRModel

    from streamtune.model.archive import check_archive
    from streamtune.ops.rnnt_loss import register

    check_archive(path, f"model.init_from '{path}'")  # before NeMo builds anything the archive names
    register()  # the start point may name streamtune's loss
    try:
        return ASRModel.restore_from(str(path), map_location="cpu", return_config=True), None
    except Exception as err:
        raise UserError(f"model.init_from '{path}' could not be read as a .nemo archive: {err}") from None


def start_from(cfg: DictConfig, trainer=None):
    """The model named by ``model.init_from`` with the recipe laid over it; returns (model, report)."""
    path = start_point(cfg)
    base, ckpt = _base_config(path)
    overlay = recipe_model_section(cfg)
    with open_dict(overlay):
        overlay.pop("tokenizer", None)  # the start point's tokenizer is kept (model.tokenizer_dir changes it)
    merged = merge_onto_base(base, overlay, str(path))
    finalise_contexts(merged)
    if cfg.finetune.mode == "adapters":
        support_adapters(merged)
    report = describe_changes(config_changes(base, merged), str(path))
    if str(path) != str(cfg.model.init_from):
        report = f"init_from {cfg.model.init_from}: {path} (Hugging Face cache)\n" + report
    if cfg.model.get("init_include") or cfg.model.get("init_exclude"):
        model, part = _partial_start(cfg, path, ckpt, merged, trainer)
        return model, f"{report}\n{part}"
    new_tok = cfg.model.get("tokenizer_dir")
    try:
        if ckpt is None:
            from nemo.collections.asr.models import ASRModel

            model = ASRModel.restore_from(str(path), override_config_path=merged, map_location="cpu",
                                          strict=True, trainer=trainer)
        else:
            _checkpoint_tokenizer(merged, path)
            model = model_class(merged.target)(cfg=merged, trainer=trainer)
            model.load_state_dict(ckpt["state_dict"], strict=True)
    except Exception as err:
        # NeMo leaves its process-wide "a model is being restored" flag set when a restore fails; every
        # model built afterwards in this process would then skip its data setup.
        # What NeMo's private ModelPT._set_model_restore_state(is_being_restored=False) sets, through the
        # public AppState properties.
        from nemo.utils import AppState

        app_state = AppState()
        app_state.is_model_being_restored = False
        app_state.nemo_file_folder = None
        if not isinstance(err, RuntimeError):
            raise
        if "size mismatch" in str(err) or "Missing key" in str(err) or "Unexpected key" in str(err):
            raise UserError(f"the recipe changes the architecture of {path}, so its weights do not fit "
                            f"({str(err).splitlines()[0][:200]}). Fine-tuning recipes may change data, optimiser, "
                            f"SpecAugment, loss and context sizes, not layer shapes (or load only part of the "
                            f"start point: model.init_include / model.init_exclude).\n{report}") from None
        raise
    if new_tok:
        report += "\n" + change_tokenizer(model, new_tok)
    return model, report


def _checkpoint_tokenizer(merged: DictConfig, path: Path) -> None:
    tok_dir = merged.tokenizer.get("dir")
    if str(merged.tokenizer.get("model_path", "")).startswith("nemo:") or not Path(str(tok_dir)).is_dir():
        raise UserError(f"the tokenizer of checkpoint '{path}' ({tok_dir}) is not on disk; "
                        "start from the run's .nemo instead, or pass model.tokenizer_dir=DIR")


def _prefixes(value) -> list[str]:
    """``model.init_include`` / ``init_exclude``: one prefix or a list of them."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(p) for p in value]


def _selected(key: str, prefixes: list[str]) -> bool:
    return any(p == "" or key == p or key.startswith(p + ".") for p in prefixes)


def _partial_start(cfg: DictConfig, path: Path, ckpt, merged: DictConfig, trainer):
    """A model built fresh from ``merged`` with the start point's tensors under ``model.init_include`` (all when
    unset) and not under ``model.init_exclude`` copied in; returns (model, report)."""
    import atexit
    import shutil
    import tempfile

    include = _prefixes(cfg.model.get("init_include")) or [""]
    exclude = _prefixes(cfg.model.get("init_exclude"))
    tok_dir = cfg.model.get("tokenizer_dir")
    if ckpt is None:
        from nemo.collections.asr.models import ASRModel

        source = ASRModel.restore_from(str(path), map_location="cpu")
        state = source.state_dict()
        if not tok_dir:  # the start point's tokenizer, on disk for as long as the model may be saved
            tok_dir = tempfile.mkdtemp(prefix="streamtune-tokenizer-")
            atexit.register(shutil.rmtree, tok_dir, ignore_errors=True)
            from streamtune.model.tokenizers import save_tokenizer

            save_tokenizer(source, tok_dir)
        del source
    else:
        state = ckpt["state_dict"]
        if not tok_dir:
            _checkpoint_tokenizer(merged, path)
            tok_dir = merged.tokenizer.dir
    if not (Path(tok_dir) / "tokenizer.model").is_file():
        raise UserError(f"model.tokenizer_dir '{tok_dir}' has no tokenizer.model; "
                        "build one with `python -m data_prep tokenizer`")
    with open_dict(merged):
        merged.tokenizer = {"dir": str(tok_dir), "type": "bpe"}
    for key, prefixes in (("init_include", include), ("init_exclude", exclude)):
        for prefix in prefixes:
            if prefix and not any(_selected(k, [prefix]) for k in state):
                modules = sorted({k.split(".", 1)[0] for k in state})
                raise UserError(f"model.{key} '{prefix}' names nothing in {path} (its modules: "
                                f"{', '.join(modules)}; prefixes like encoder or encoder.layers.0)")
    model = model_class(merged.target)(cfg=merged, trainer=trainer)
    fresh = model.state_dict()
    keep = {k: v for k, v in state.items() if _selected(k, include) and not (exclude and _selected(k, exclude))}
    for key, value in keep.items():
        if key not in fresh:
            raise UserError(f"model.init_include keeps {key} of {path}, which the recipe's model does not have")
        if fresh[key].shape != value.shape:
            raise UserError(f"model.init_include keeps {key} of {path} with shape {tuple(value.shape)}, but the "
                            f"recipe's model has {tuple(fresh[key].shape)}: leave it fresh (model.init_exclude)")
    model.load_state_dict(keep, strict=False)
    lines = [f"partial init from {path} (model.init_include={include if include != [''] else 'all'}, "
             f"model.init_exclude={exclude or 'none'}): {len(keep)} of {len(fresh)} tensors loaded, the rest fresh"]
    for module in sorted({k.split(".", 1)[0] for k in fresh}):
        names = [k for k in fresh if k.split(".", 1)[0] == module]
        loaded = sum(k in keep for k in names)
        what = "loaded" if loaded == len(names) else "fresh" if loaded == 0 else "partly loaded"
        lines.append(f"  {module}: {loaded} of {len(names)} tensors from the start point ({what})")
    return model, "\n".join(lines)


def rebuild_loss(model) -> None:
    """The RNN-T loss exactly as the model's config says (what NeMo's __init__ does)."""
    from nemo.collections.asr.losses.rnnt import RNNTLoss

    loss_name, loss_kwargs = model.extract_rnnt_loss_cfg(model.cfg.get("loss", None))
    model.loss = RNNTLoss(num_classes=model.joint.num_classes_with_blank - 1, loss_name=loss_name,
                          loss_kwargs=loss_kwargs, reduction=model.cfg.get("rnnt_reduction", "mean_batch"))
    if model.joint.fuse_loss_wer:
        model.joint.set_loss(model.loss)


def _pieces(sp) -> list[tuple[str, float]]:
    return [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]


def change_tokenizer(model, tokenizer_dir: str) -> str:
    """Switch the model to the tokenizer in ``tokenizer_dir`` unless it already has that one (same pieces and
    scores): a recipe naming the model's own tokenizer fine-tunes it as it is."""
    import sentencepiece as spm

    tok = Path(tokenizer_dir)
    if not (tok / "tokenizer.model").is_file():
        raise UserError(f"model.tokenizer_dir '{tok}' has no tokenizer.model; "
                        "build one with `python -m data_prep tokenizer`")
    current = getattr(model.tokenizer, "tokenizer", None)
    if isinstance(current, spm.SentencePieceProcessor) and \
            _pieces(current) == _pieces(spm.SentencePieceProcessor(model_file=str(tok / "tokenizer.model"))):
        return f"model.tokenizer_dir {tok}: the start point's own tokenizer, kept"
    old = model.tokenizer.vocab_size
    model.change_vocabulary(new_tokenizer_dir=str(tok), new_tokenizer_type="bpe")
    rebuild_loss(model)  # change_vocabulary resets the loss (FastEmit, loss type) to defaults
    return (f"model.tokenizer_dir {tok}: vocabulary {old} -> {model.tokenizer.vocab_size} tokens; "
            f"prediction net and joint re-initialised; loss rebuilt from model.loss")


def check_style(cfg: DictConfig, path: Path) -> str:
    """Compare the training transcripts' style with what the start point's tokenizer (or ``model.tokenizer_dir``)
    writes: a UserError when the data would teach it to stop writing capitals or punctuation (unless
    ``data.allow_style_change``); otherwise one line for model_setup.txt."""
    from streamtune.data.style import TokenizerStyle, style_guard, tokenizer_pieces, weighted_shares
    from streamtune.data.survey import survey_training_data

    source = cfg.model.get("tokenizer_dir") or path
    if not cfg.model.get("tokenizer_dir") and path.suffix == ".ckpt":
        source = _base_config(path)[0].tokenizer.get("dir") or path
    pieces = tokenizer_pieces(str(source))
    if not pieces:
        return f"transcript style: not compared (no SentencePiece tokenizer found in {source})"
    writes = TokenizerStyle.of(pieces)
    survey = survey_training_data(cfg.data)
    shares = weighted_shares(survey.styles)
    error, warnings = style_guard(shares, writes, str(cfg.model.init_from))
    if error and not cfg.data.allow_style_change:
        raise UserError(error)
    can = [w for w, ok in (("capitals", writes.capitals), ("punctuation", writes.punctuation),
                           ("digits", writes.digits)) if ok]
    line = (f"transcript style: data.train {100 * shares['capitals']:.0f}% with capitals, "
            f"{100 * shares['punctuation']:.0f}% with punctuation, {100 * shares['digits']:.0f}% with digits; the "
            f"tokenizer writes {', '.join(can) or 'none of capitals, punctuation, digits'}")
    if error:
        line += " (style change allowed: data.allow_style_change=true)"
    return "\n".join([line, *(f"warning: {w}" for w in warnings)])


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise UserError(f"finetune.mode must be one of {', '.join(MODES)}, not '{mode}'")


# A hub model name: owner/name, no file suffix of ours.
HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def start_point(cfg: DictConfig) -> Path:
    """``model.init_from`` as an existing file: a local path, or a hub name resolved to the cached ``.nemo``
    (a clear error otherwise)."""
    spec = str(cfg.model.init_from)
    path = Path(spec)
    if path.is_file():
        return path
    if HUB_NAME.fullmatch(spec) and path.suffix not in (".nemo", ".ckpt"):
        return hub_model_file(spec)
    raise UserError(f"model.init_from '{path}' does not exist; pass a local .nemo or .ckpt file, or a Hugging Face "
                    "model name (nvidia/nemotron-speech-streaming-en-0.6b)")


def hub_model_file(name: str) -> Path:
    """The ``.nemo`` of hub model ``name``, the way NeMo's ``ASRModel.from_pretrained`` finds it: the Hugging Face
    cache first, then a download (which ``HF_HUB_OFFLINE=1`` forbids)."""
    from huggingface_hub import constants
    from nemo.collections.asr.models import ASRModel

    filename = f"{name.rsplit('/', 1)[-1]}.nemo"
    try:
        found = Path(ASRModel.from_pretrained(name, return_model_file=True))
    except Exception as err:  # noqa: BLE001 - offline, not found, network: all end in the same advice
        first = (str(err).splitlines() or [""])[0][:120]
        why = ("HF_HUB_OFFLINE=1 forbids downloading it" if constants.HF_HUB_OFFLINE
               else f"downloading it failed ({type(err).__name__}: {first})")
        raise UserError(f"model.init_from '{name}': {filename} is not in the Hugging Face cache "
                        f"{constants.HF_HUB_CACHE} and {why}; fill the cache where there is network "
                        f"(`hf download {name} {filename}`, then copy the cache here or point HF_HUB_CACHE at it), "
                        "or pass a local .nemo") from None
    if not found.is_file():
        raise UserError(f"model.init_from '{name}': the hub repository has no {filename} ({found}); "
                        "pass a local .nemo")
    return found


def apply_finetune_mode(model, fcfg) -> str:
    """Freeze what the mode says; returns a one-line summary of what trains."""
    check_mode(fcfg.mode)
    if fcfg.mode == "frozen_encoder":
        model.encoder.freeze()
    elif fcfg.mode == "adapters":
        from nemo.collections.common.parts.adapter_modules import LinearAdapterConfig

        if not hasattr(model, "add_adapter"):
            raise UserError(f"{type(model).__name__} does not support adapters; use finetune.mode=frozen_encoder")
        if not any(ADAPTER_NAME in getattr(m, "adapter_layer", {}) for m in model.encoder.modules()):
            cfg = LinearAdapterConfig(in_features=model.cfg.encoder.d_model, dim=fcfg.adapter_dim)
            model.add_adapter(name=f"encoder:{ADAPTER_NAME}", cfg=OmegaConf.structured(cfg))
        model.set_enabled_adapters(name=ADAPTER_NAME, enabled=True)
        model.freeze()
        model.unfreeze_enabled_adapters()
        if fcfg.adapters_train_decoder_joint:
            model.decoder.unfreeze()
            model.joint.unfreeze()
        model.train()
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return f"finetune.mode={fcfg.mode}: {trainable:,} of {total:,} parameters train"


def check_param_groups(model) -> None:
    """NeMo's ``model.optim_param_groups`` keys must name modules of the model (checked before training)."""
    groups = model.cfg.get("optim_param_groups")
    if not groups:
        return
    names = [n for n, _ in model.named_children()]
    for key in groups:
        if key not in names:
            raise UserError(f"model.optim_param_groups.{key}: the model has no module '{key}' "
                            f"(it has {', '.join(names)})")
