"""Where the stack lives and the embedded Redis's address, shared by the settings and
devstack. Plain Python, no Django: devstack reads these before any settings exist, and
the settings must not import devstack (it sits above the platform)."""

from pathlib import Path

# platform/rollyard/defaults.py → the repository.
REPO_ROOT = Path(__file__).resolve().parents[2]
VAR_DIR = REPO_ROOT / "var"
# Where devstack starts its embedded Redis when REDIS_URL is unset.
EMBEDDED_REDIS_URL = "redis://127.0.0.1:6390/0"
