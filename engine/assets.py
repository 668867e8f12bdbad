"""Model folders: the built-in ones shipped in engine/assets/ (made by
`python -m engine.warmstart`) and the file check every model folder passes (torch-free,
so spec validation can run it)."""

import errno
from pathlib import Path

from engine.registry import Registry

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
BUILTIN_PREFIX = "builtin:"

BUILTIN_MODELS: Registry[Path] = Registry("built-in model")
BUILTIN_MODELS.register("arith-tiny", ASSETS_DIR / "arith-tiny")


def resolve_model_path(path: str) -> Path:
    """Map a spec's model path ('builtin:<name>' or a folder) to a local folder."""
    if path.startswith(BUILTIN_PREFIX):
        return BUILTIN_MODELS.get(path.removeprefix(BUILTIN_PREFIX))
    return Path(path)


def missing_model_files(folder: Path) -> list[str]:
    """What a Hugging Face causal-LM folder lacks, one phrase per missing part (empty
    when complete): a config.json, safetensors weights (one file or a sharded index),
    and a tokenizer (tokenizer.json, or a SentencePiece tokenizer.model)."""
    missing = []
    if not (folder / "config.json").is_file():
        missing.append("config.json")
    if not any(folder.glob("*.safetensors")):
        missing.append("weights (model.safetensors, or shards with model.safetensors.index.json)")
    if not ((folder / "tokenizer.json").is_file() or (folder / "tokenizer.model").is_file()):
        missing.append("a tokenizer (tokenizer.json or tokenizer.model)")
    return missing


def lookup_failure(exc: BaseException) -> str:
    """Why a path cannot be looked up, without the path (the field names it)."""
    if getattr(exc, "errno", None) == errno.ENAMETOOLONG:
        return "a name in this path is longer than the file system allows (255 bytes per name)"
    return f"cannot look this path up: {getattr(exc, 'strerror', None) or exc}"


def check_model_folder(path: str) -> Path:
    """The local folder of a spec's model path, or ValueError naming what is missing."""
    if path.startswith(BUILTIN_PREFIX):
        name = path.removeprefix(BUILTIN_PREFIX)
        if name not in BUILTIN_MODELS:
            raise ValueError(BUILTIN_MODELS.unknown_message(name))
    folder = resolve_model_path(path)
    try:
        if not folder.is_dir():
            raise ValueError(f"no model folder at {str(folder)!r}")
        missing = missing_model_files(folder)
    except OSError as exc:  # e.g. a name longer than the file system allows
        raise ValueError(lookup_failure(exc)) from None
    if missing:
        raise ValueError(f"the model folder {str(folder)!r} lacks " + ", ".join(missing))
    return folder
