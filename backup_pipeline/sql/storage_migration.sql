-- Status of the Google Drive -> MinIO migration, one row per media asset that was ever
-- found in Google Drive. Applied by backup_pipeline.services.migration.ensure_schema()
-- before every migration run: every statement here MUST stay idempotent.
--
-- Life cycle of a row (see docs/S3-STORAGE-IMPLEMENTATION.md):
--   pending  -> the asset is known and its target key is fixed (written BEFORE any upload,
--               so a crash leaves at most an object at this key, never one elsewhere)
--   copied   -> the object is in MinIO; size/md5/sha256 are what was streamed
--   verified -> those match Drive's size and md5Checksum (and sha256Checksum when Drive
--               reports one) and MinIO's stat of the object
--   switched -> media_assets points to the MinIO object (same transaction as this status)
--   failed   -> error says why; the next run tries again (attempts counts tries)
-- asset_id holds media_assets.id as text so this table does not depend on the id's type.

CREATE TABLE IF NOT EXISTS storage_migration (
    asset_id          text PRIMARY KEY,
    drive_file_id     text NOT NULL,
    status            text NOT NULL DEFAULT 'pending',
    target_bucket     text NOT NULL,
    target_key        text NOT NULL,
    size_bytes        bigint,
    drive_md5         text,
    md5               text,
    sha256            text,
    content_type      text,
    error             text,
    attempts          integer NOT NULL DEFAULT 0,
    last_run_id       text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    copied_at         timestamptz,
    verified_at       timestamptz,
    switched_at       timestamptz,
    source_deleted_at timestamptz
);

DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_constraint WHERE conname = 'storage_migration_status_check'
    ) THEN
        ALTER TABLE storage_migration ADD CONSTRAINT storage_migration_status_check
            CHECK (status IN ('pending', 'copied', 'verified', 'switched', 'failed'));
    END IF;
END
$$;

-- One object per key: two assets can never be migrated onto the same object.
CREATE UNIQUE INDEX IF NOT EXISTS storage_migration_target_uq
    ON storage_migration (target_bucket, target_key);

CREATE INDEX IF NOT EXISTS storage_migration_status_idx ON storage_migration (status);
