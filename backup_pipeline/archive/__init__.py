"""The backup archive format: pax tar, multi-member gzip, STREAM/AES-256-GCM container, keys, manifest.

Pure streaming code: no Dagster, no database, no network. Specified in
``docs/architecture/BACKUP-FORMAT.md``.
"""
