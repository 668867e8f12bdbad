"""Built-in models shipped in engine/assets/ (made by `python -m engine.warmstart`)."""

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
