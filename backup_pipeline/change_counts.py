"""The names of a set's change counts in the ledger (``backup_set`` materialization metadata).

A module of its own, free of imports, so that the writer (``services/backup_finalize.py``) and the
readers (``client.py`` and the CLI, which must not load the backup machinery) share one tuple.
"""

#: In this order in the ledger, the CLI's ``show`` and ``history``.
CHANGE_KEYS = (
    "objects_new",
    "objects_new_bytes",
    "objects_changed",
    "objects_changed_bytes",
    "objects_deleted",
    "objects_deleted_bytes",
    "uploaded_bytes",
    "shared_bytes",
)
