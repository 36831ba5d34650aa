"""Recipe configuration: YAML + ``key=value`` overrides merged onto a typed schema.

Every entry point reads ``--config RECIPE`` plus OmegaConf dotlist overrides.
The merged config is in struct mode, so a misspelt key (in the recipe or on
the command line) is an error that names the key, not a silent new key. The
``model`` section is NeMo's own model config, passed through untouched; inside
it, a key the recipe does not already have can only be *added* on purpose,
with a leading ``+`` (``+model.encoder.xscaling=false``).
"""

from __future__ import annotations

import difflib
from contextlib import contextmanager, nullcontext
from pathlib import Path

from omegaconf import MISSING, DictConfig, OmegaConf, open_dict
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException, ValidationError

from streamtune.config.schema import MODEL_KEYS, TRAINER_OWNED, RecipeConfig
from streamtune.errors import UserError


def trainer_arguments() -> set[str]:
    """The keyword arguments of ``lightning.pytorch.Trainer``."""
    import inspect

    from lightning.pytorch import Trainer

    return {n for n in inspect.signature(Trainer.__init__).parameters if n != "self"}


def _allow_trainer_keys(cfg: DictConfig, keys: list[str], where: str) -> None:
    """Open ``trainer.<key>`` for each key that is a Lightning Trainer argument not in our schema; a key
    streamtune sets itself is an error naming the key to use. Other unknown keys are left to fail as typos."""
    present = set(cfg.trainer.keys())  # (`in` would miss a key whose value is ??? still)
    extra = [k for k in dict.fromkeys(keys) if k not in present]
    if not extra:
        return
    params = trainer_arguments()
    for key in extra:
        if key in TRAINER_OWNED:
            raise UserError(f"trainer.{key} in {where} is set by streamtune from {TRAINER_OWNED[key]}")
        if key in params:
            with open_dict(cfg.trainer):
                cfg.trainer[key] = None


def _trainer_override_keys(overrides: list[str]) -> list[str]:
    return [item.split("=", 1)[0].split(".")[1] for item in overrides
            if item.startswith("trainer.") and item.count(".") >= 1 and "=" in item]


def _known_keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    keys = []
    for key in cfg.keys():
        full = f"{prefix}{key}"
        keys.append(full)
        if OmegaConf.is_missing(cfg, key) or OmegaConf.is_interpolation(cfg, key):
            continue  # unset or a reference: no keys of its own to offer
        value = cfg[key]
        if isinstance(value, DictConfig):
            keys.extend(_known_keys(value, full + "."))
    return keys


def _unknown_key_error(err: ConfigKeyError, where: str, cfg: DictConfig, overrides: list[str] = ()) -> UserError:
    full_key = getattr(err, "full_key", None) or str(err)
    # Name the key as the user typed it (OmegaConf stops at the first unknown level).
    for item in overrides:
        key = item.split("=", 1)[0].lstrip("+")
        if key == full_key or key.startswith(full_key + "."):
            full_key = key
            break
    known = _known_keys(cfg)
    if full_key.startswith("trainer."):
        known += [f"trainer.{k}" for k in trainer_arguments() if k not in TRAINER_OWNED]
    close = difflib.get_close_matches(full_key, known, n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    add = " To add a new key inside `model`, prefix it with '+'." if full_key.startswith("model.") else ""
    return UserError(f"unknown config key '{full_key}' in {where}.{hint}{add}")


def _split_overrides(overrides: list[str]) -> tuple[list[str], list[str]]:
    plain, added = [], []
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override '{item}' is not of the form key=value")
        if item.startswith("+"):
            if not item.startswith("+model."):
                raise UserError(
                    f"override '{item}': only keys inside `model` (NeMo's config) can be added with '+'; "
                    "every other section has a fixed schema"
                )
            added.append(item[1:])
        else:
            plain.append(item)
    return plain, added


# A recipe may start from another: `base: full_finetune.yaml` (relative to the recipe), then override it.
BASE_KEY = "base"


def find_recipe(name: str | Path) -> Path:
    """A recipe file: the path as given, else a recipe shipped with streamtune by name (``nemotron/full_finetune``,
    ``.yaml`` optional), else a :class:`UserError` listing the shipped ones."""
    path = Path(name)
    if path.is_file():
        return path
    shipped = packaged_recipes()
    key = str(name).removesuffix(".yaml").removeprefix("recipes/")
    if key in shipped:
        return shipped[key]
    raise UserError(f"recipe '{name}' does not exist; pass a YAML file or one of the shipped recipes: "
                    f"{', '.join(sorted(shipped))}")


def packaged_recipes() -> dict[str, Path]:
    """``{"demo/tiny_cpu": path, "nemotron/full_finetune": path, ...}``: the recipes installed with streamtune
    (``streamtune/recipes/`` in an installed package; the checkout's ``recipes/`` otherwise)."""
    here = Path(__file__).resolve().parents[1]  # streamtune/
    root = here / "recipes"
    if not root.is_dir():
        root = here.parent / "recipes"
    return {p.relative_to(root).with_suffix("").as_posix(): p for p in sorted(root.rglob("*.yaml"))}


def _read_recipe(path: Path, seen: tuple[Path, ...] = ()) -> DictConfig:
    """A recipe YAML with its ``base`` chain merged underneath it (the recipe's own values win)."""
    if not path.is_file():
        raise UserError(f"recipe '{path}' does not exist; pass --config with a YAML file under recipes/")
    if path.resolve() in seen:
        raise UserError(f"recipe '{path}' is its own base (through {' -> '.join(str(p) for p in seen)})")
    try:
        recipe_cfg = OmegaConf.load(path)
    except Exception as err:  # yaml errors have many types
        raise UserError(f"recipe '{path}' is not valid YAML: {err}") from None
    base = recipe_cfg.pop(BASE_KEY, None) if isinstance(recipe_cfg, DictConfig) else None
    if base is None:
        return recipe_cfg
    parent = _read_recipe(path.parent / str(base), (*seen, path.resolve()))
    return OmegaConf.merge(parent, recipe_cfg)


def missing_keys(cfg: DictConfig, keys: list[str] | None = None) -> None:
    """A :class:`UserError` naming every unset mandatory value (``???``), or only those among ``keys``."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if keys is not None:
        missing = [k for k in missing if k in keys]
    if missing:
        raise UserError("required config key(s) not set (??? in the recipe): " + ", ".join(missing) +
                        "; set them in the recipe or pass KEY=VALUE")


def load_config(recipe: str | Path | None, overrides: list[str] | None = None, *,
                check_missing: bool = True) -> DictConfig:
    """Load a recipe (and its ``base`` chain) onto the schema, apply overrides, and validate.

    Raises :class:`UserError` naming the file or key for anything a user can fix.
    """
    overrides = list(overrides or [])
    schema = OmegaConf.structured(RecipeConfig)
    cfg = schema
    if recipe is not None:
        recipe_cfg = _read_recipe(find_recipe(recipe))
        trainer = recipe_cfg.get("trainer") if isinstance(recipe_cfg, DictConfig) else None
        if isinstance(trainer, DictConfig):
            _allow_trainer_keys(schema, list(trainer.keys()), f"recipe {recipe}")
        try:
            cfg = OmegaConf.merge(schema, recipe_cfg)
        except ConfigKeyError as err:
            raise _unknown_key_error(err, f"recipe {recipe}", schema) from None
        except ValidationError as err:
            raise UserError(f"recipe {recipe}: bad value for '{err.full_key}': {err.msg}") from None
        # OmegaConf's merge keeps a default where the recipe says ??? (it treats ??? as "no value"): put the
        # recipe's ??? back, so that a value the recipe requires is required.
        for key in OmegaConf.missing_keys(recipe_cfg):
            if "[" not in key:  # inside a list the ??? stays: a recipe's list replaces the default whole
                OmegaConf.update(cfg, key, MISSING, force_add=True)
    plain, added = _split_overrides(overrides)
    _allow_trainer_keys(cfg, _trainer_override_keys(plain), "the command line")
    with open_dict(cfg.model):
        present = set(cfg.model.keys())  # (setdefault would overwrite a ??? value)
        for key in MODEL_KEYS:
            if key not in present:
                cfg.model[key] = None
    OmegaConf.set_struct(cfg, True)
    try:
        if added:
            # Open `model` for the additions only, then let it inherit struct mode again.
            OmegaConf.set_struct(cfg.model, False)
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(added))
            OmegaConf.set_struct(cfg.model, None)
        if plain:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(plain))
    except ConfigKeyError as err:
        raise _unknown_key_error(err, "command-line overrides", cfg, overrides) from None
    except ValidationError as err:
        raise UserError(f"override for '{err.full_key}': {err.msg}") from None
    OmegaConf.set_struct(cfg, True)
    if check_missing:
        missing_keys(cfg, ["run.name", "run.seed"])
        require(cfg, ["run.name", "run.seed"])
    return cfg


def require(cfg: DictConfig, keys: list[str]) -> None:
    """Fail with a clear message when any of ``keys`` is missing (``???``) or null."""
    for key in keys:
        try:
            value = OmegaConf.select(cfg, key, throw_on_missing=True)
        except MissingMandatoryValue:
            value = None
        except OmegaConfBaseException as err:
            raise UserError(f"config key '{key}' cannot be resolved: {err}") from None
        if value is None:
            raise UserError(f"config key '{key}' is required; set it in the recipe or pass {key}=VALUE")


@contextmanager
def _environment_kept():
    """While active, ``${oc.env:NAME}`` resolves to its own text: a secret read from the environment stays an
    interpolation (in every value derived from it too) instead of being written out. On leaving, OmegaConf's
    own resolver (``omegaconf.resolvers.oc.env``, the one it registers at import) is put back."""
    from omegaconf.resolvers import oc

    def keep(name, default=_NO_DEFAULT):
        return "${oc.env:" + str(name) + ("" if default is _NO_DEFAULT else f",{default}") + "}"

    OmegaConf.register_new_resolver("oc.env", keep, replace=True)
    try:
        yield
    finally:
        OmegaConf.register_new_resolver("oc.env", oc.env, replace=True)


_NO_DEFAULT = object()


def resolved(cfg: DictConfig, allow_missing: bool = False, keep_secrets: bool = False) -> DictConfig:
    """A resolved copy (interpolations replaced by values), still checked for errors.

    ``allow_missing`` keeps unset ``???`` values as they are (a stage saving the config it ran with need not set
    keys only another stage reads); otherwise every one of them is named in one error. ``keep_secrets`` leaves
    ``${oc.env:...}`` (API keys, tokens) as interpolations: for every config that is written or logged.
    """
    if not allow_missing:
        missing_keys(cfg)
    try:
        with _environment_kept() if keep_secrets else nullcontext():
            container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=not allow_missing)
    except MissingMandatoryValue as err:
        raise UserError(f"config key '{err.full_key}' is required (it is ??? in the recipe)") from None
    except OmegaConfBaseException as err:
        raise UserError(f"config cannot be resolved: {err}") from None
    return OmegaConf.create(container)


def save_config(cfg: DictConfig, path: str | Path) -> Path:
    """Write the resolved config beside an output, so the output says how it was made."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(OmegaConf.to_yaml(resolved(cfg, allow_missing=True, keep_secrets=True)))
    return path


def printed_config(cfg: DictConfig) -> str:
    """The merged config as ``--print-config`` shows it (resolved; ``???`` left for keys still unset)."""
    return OmegaConf.to_yaml(resolved(cfg, allow_missing=True))


def add_config_args(parser, required: bool = True) -> None:
    """The shared CLI shape: ``--config RECIPE`` then ``key=value`` overrides."""
    parser.add_argument("--config", required=required,
                        help="recipe: a YAML file, or a shipped one by name (nemotron/full_finetune, ...)")
    parser.add_argument("--print-config", action="store_true", help="print the merged config and exit")
    parser.add_argument("overrides", nargs="*", help="key=value overrides (OmegaConf dotlist)")
