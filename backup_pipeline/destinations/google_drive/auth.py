"""Drive credentials in the three setups, and the one name of the principal that messages use.

The credentials file's content is a secret: it is read here, never logged or echoed in an
error (a parse error names the file and the exception type only).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from google.oauth2 import credentials as user_credentials
from google.oauth2 import service_account

from backup_pipeline.settings import DriveAuthMode

from ..base import AuthError
from .config import DriveConfig


class DriveCredentials:
    """Builds google-auth credentials from the configured file; caches the parsed key info."""

    def __init__(self, config: DriveConfig):
        self.cfg = config
        self._info: dict[str, Any] | None = None

    def key_info(self) -> dict[str, Any]:
        if self._info is None:
            path = self.cfg.credentials_file
            if not path:
                raise AuthError(
                    "no Drive credentials configured: set BACKUP_PIPELINE_DRIVE_CREDENTIALS_FILE to the path of "
                    "the service-account key or OAuth authorized-user JSON (docs/guides/GOOGLE-DRIVE-SETUP.md)"
                )
            try:
                info = json.loads(Path(path).read_text(encoding="utf-8"))
            except FileNotFoundError:
                raise AuthError(f"Drive credentials file {path} does not exist; check the path") from None
            except (OSError, ValueError) as exc:
                # Never echo the content: it is a secret.
                raise AuthError(
                    f"Drive credentials file {path} cannot be read as JSON ({type(exc).__name__})"
                ) from None
            if not isinstance(info, dict):
                raise AuthError(f"Drive credentials file {path} is not a JSON object")
            self._info = info
        return self._info

    def build(self) -> Any:
        """Fresh credentials (one object per thread: refreshing is not thread-safe)."""
        info = dict(self.key_info())
        scopes = [self.cfg.scope]
        if self.cfg.token_uri:
            info["token_uri"] = self.cfg.token_uri
        path = self.cfg.credentials_file
        try:
            if self.cfg.auth_mode is DriveAuthMode.OAUTH:
                if info.get("type") == "service_account":
                    raise AuthError(
                        f"{path} is a service-account key but drive_auth_mode=oauth needs an OAuth "
                        "authorized-user JSON (client_id, client_secret, refresh_token); use drive_auth_mode="
                        "shared_drive or delegation for a service account"
                    )
                user = user_credentials.Credentials.from_authorized_user_info(info, scopes=scopes)  # type: ignore[no-untyped-call]
                # from_authorized_user_info always resets token_uri to Google's (google-auth 2.63).
                return user.with_token_uri(self.cfg.token_uri) if self.cfg.token_uri else user
            if info.get("type") != "service_account":
                raise AuthError(
                    f"{path} is not a service-account key (type={info.get('type')!r}); drive_auth_mode="
                    f"{self.cfg.auth_mode.value} needs one. For a user's refresh token use drive_auth_mode=oauth"
                )
            creds = service_account.Credentials.from_service_account_info(info, scopes=scopes)  # type: ignore[no-untyped-call]
            if self.cfg.auth_mode is DriveAuthMode.DELEGATION and self.cfg.subject:
                creds = creds.with_subject(self.cfg.subject)
            return creds
        except (ValueError, KeyError) as exc:
            raise AuthError(f"Drive credentials file {path} is incomplete or malformed: {exc}") from None

    def principal(self) -> str:
        """Who Drive sees: the delegated user, the service account, or the OAuth user."""
        try:
            info = self.key_info()
        except AuthError:
            return "(unknown)"
        if self.cfg.auth_mode is DriveAuthMode.DELEGATION and self.cfg.subject:
            return f"{self.cfg.subject} (via {info.get('client_email', '?')})"
        return str(info.get("client_email") or "the OAuth user")

    def service_account_email(self) -> str:
        try:
            return str(self.key_info().get("client_email") or "?")
        except AuthError:
            return "?"

    def client_id(self) -> str:
        try:
            return str(self.key_info().get("client_id", "?"))
        except AuthError:
            return "?"
