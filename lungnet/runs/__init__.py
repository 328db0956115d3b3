"""Everything about a run folder: creating it, its config, and reading its artefacts back."""

from lungnet.runs.folder import (
    CONFIG_FILE,
    load_run_config,
    new_run_dir,
    require_files,
    save_config,
    upgrade_legacy_config,
)

__all__ = [
    "CONFIG_FILE",
    "load_run_config",
    "new_run_dir",
    "require_files",
    "save_config",
    "upgrade_legacy_config",
]
