"""The backup keys: the org keyring (from the org secret file) and the recovery public key.

Only file *paths* are configuration; the secrets are read from the files when used, so they
never appear in run config, the UI or event metadata.
"""

from __future__ import annotations

from dagster import ConfigurableResource
from pydantic import Field

from backup_pipeline.archive.keys import OrgKeyring, RecoveryKeyStore, RecoveryPublicKey


class BackupKeysResource(ConfigurableResource):
    """Keys for encrypting new backups and decrypting old ones."""

    org_secret_file: str = Field(
        description="Path of the org secret file (`<key id>:<base64 32 bytes>` per line, newest last)."
    )
    state_dir: str = Field(description="Directory of the recovery key store (public keys, wrapped secret).")

    def keyring(self) -> OrgKeyring:
        """The org keyring, read fresh each call so a rotated secret file takes effect without a restart."""
        return OrgKeyring.from_file(self.org_secret_file)

    def recovery_store(self) -> RecoveryKeyStore:
        return RecoveryKeyStore(self.state_dir, self.keyring())

    def recovery_public_key(self) -> RecoveryPublicKey:
        """The current recovery public key, creating the recovery key pair on first use."""
        return self.recovery_store().ensure()
