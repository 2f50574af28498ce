-- Schema of the application this pipeline protects, as far as the pipeline touches it,
-- plus enough ordinary tables for a realistic dump. Applied by backup_pipeline.sample_app
-- (demo and tests). Idempotent: safe to apply twice.

CREATE TABLE IF NOT EXISTS schema_migrations (
    version     text PRIMARY KEY,
    applied_at  timestamptz NOT NULL DEFAULT now()
);

DO $$ BEGIN
    CREATE TYPE asset_visibility AS ENUM ('private', 'shared', 'public');
EXCEPTION WHEN duplicate_object THEN NULL;
END $$;

CREATE TABLE IF NOT EXISTS users (
    id            bigserial PRIMARY KEY,
    email         text NOT NULL UNIQUE,
    display_name  text NOT NULL,
    locale        text NOT NULL DEFAULT 'en',
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- Where media files live. 'google_drive' is the legacy provider the migration job moves
-- away from: such rows carry drive_file_id instead of bucket/object_key.
CREATE TABLE IF NOT EXISTS media_assets (
    id               bigserial PRIMARY KEY,
    owner_id         bigint REFERENCES users (id) ON DELETE SET NULL,
    storage_provider text NOT NULL CHECK (storage_provider IN ('minio', 'google_drive')),
    bucket           text,
    object_key       text,
    drive_file_id    text,
    original_filename text NOT NULL,
    content_type     text NOT NULL DEFAULT 'application/octet-stream',
    size_bytes       bigint NOT NULL CHECK (size_bytes >= 0),
    checksum_sha256  text CHECK (checksum_sha256 ~ '^[0-9a-f]{64}$'),
    checksum_md5     text CHECK (checksum_md5 ~ '^[0-9a-f]{32}$'),
    visibility       asset_visibility NOT NULL DEFAULT 'private',
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT media_assets_location CHECK (
        (storage_provider = 'minio' AND bucket IS NOT NULL AND object_key IS NOT NULL)
        OR (storage_provider = 'google_drive' AND drive_file_id IS NOT NULL)
    )
);
CREATE UNIQUE INDEX IF NOT EXISTS media_assets_object ON media_assets (bucket, object_key)
    WHERE storage_provider = 'minio';
CREATE UNIQUE INDEX IF NOT EXISTS media_assets_drive_file ON media_assets (drive_file_id)
    WHERE storage_provider = 'google_drive';
CREATE INDEX IF NOT EXISTS media_assets_owner ON media_assets (owner_id);

-- The application's storage setting (one row). The migration job fixes it to 'minio'.
CREATE TABLE IF NOT EXISTS media_asset_settings (
    id                smallint PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    storage_provider  text NOT NULL CHECK (storage_provider IN ('minio', 'google_drive')),
    default_bucket    text NOT NULL DEFAULT 'media',
    max_upload_bytes  bigint NOT NULL DEFAULT 104857600,
    updated_at        timestamptz NOT NULL DEFAULT now()
);

-- Generic key/value settings of the app's admin page; 'media.storage_backend' is the
-- storage choice the migration removes.
CREATE TABLE IF NOT EXISTS app_settings (
    key         text PRIMARY KEY,
    value       jsonb NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS albums (
    id          bigserial PRIMARY KEY,
    owner_id    bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    title       text NOT NULL,
    description text,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS album_assets (
    album_id  bigint NOT NULL REFERENCES albums (id) ON DELETE CASCADE,
    asset_id  bigint NOT NULL REFERENCES media_assets (id) ON DELETE CASCADE,
    position  integer NOT NULL,
    PRIMARY KEY (album_id, asset_id)
);

CREATE TABLE IF NOT EXISTS comments (
    id          bigserial PRIMARY KEY,
    asset_id    bigint NOT NULL REFERENCES media_assets (id) ON DELETE CASCADE,
    author_id   bigint REFERENCES users (id) ON DELETE SET NULL,
    body        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS audit_log (
    id          bigserial PRIMARY KEY,
    actor_id    bigint REFERENCES users (id) ON DELETE SET NULL,
    action      text NOT NULL,
    details     jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS audit_log_created ON audit_log (created_at);

-- Runtime data a restore does not need (excluded by the default exclude_table_patterns;
-- their schema is still dumped).
CREATE TABLE IF NOT EXISTS sessions (
    token       text PRIMARY KEY,
    user_id     bigint REFERENCES users (id) ON DELETE CASCADE,
    expires_at  timestamptz NOT NULL
);

CREATE TABLE IF NOT EXISTS thumbnail_cache (
    asset_id    bigint PRIMARY KEY REFERENCES media_assets (id) ON DELETE CASCADE,
    thumbnail   bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE OR REPLACE FUNCTION touch_updated_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END $$;

DROP TRIGGER IF EXISTS media_assets_touch ON media_assets;
CREATE TRIGGER media_assets_touch BEFORE UPDATE ON media_assets
    FOR EACH ROW EXECUTE FUNCTION touch_updated_at();

CREATE OR REPLACE VIEW media_usage_by_owner AS
    SELECT owner_id, storage_provider, count(*) AS assets, sum(size_bytes) AS bytes
    FROM media_assets GROUP BY owner_id, storage_provider;

INSERT INTO schema_migrations (version) VALUES
    ('20240101000000_initial'),
    ('20240315120000_media_assets'),
    ('20240610090000_albums'),
    ('20250102080000_media_asset_settings')
ON CONFLICT DO NOTHING;
