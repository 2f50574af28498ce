"""The settings file as the CLI reads it: settings *and* the secrets an operator keeps next to them.

``settings.load_settings`` reads the file's settings; the secrets (S3 keys, database password,
client password) are read from the environment by name, never as settings fields. Loading the
file's ``BACKUP_PIPELINE_*`` lines into the environment of this process (where not set already)
gives every command both, the way ``set -a; . file`` gives them to the Dagster processes.
"""

from __future__ import annotations

import os
from pathlib import Path

from backup_pipeline.settings import ENV_PREFIX, SETTINGS_FILE_ENV


def apply_settings_file(path: str | os.PathLike[str] | None) -> None:
    """Put the file's ``BACKUP_PIPELINE_*`` lines into the environment, where not set already.

    The environment wins over the file, as in ``settings.load_settings``. A missing file is
    left to ``load_settings``, which reports it naming the variable (exit 2).
    """
    if not path:
        return
    os.environ[SETTINGS_FILE_ENV] = str(path)
    if not Path(path).is_file():
        return
    from dotenv import dotenv_values

    for name, value in dotenv_values(path).items():
        if name.startswith(ENV_PREFIX) and value is not None and name not in os.environ:
            os.environ[name] = value
