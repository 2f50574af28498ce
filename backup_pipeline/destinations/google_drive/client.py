"""HTTP clients for Drive, one set per thread, and the one place exceptions become DestinationErrors.

Metadata calls go through google-api-python-client, built from the bundled discovery
document with its root URL replaced by ``api_root`` (the only way every call, media
included, honours a non-Google endpoint; design note §5). Uploads and downloads use
``google.auth.transport.requests.AuthorizedSession`` directly. httplib2 is not thread-safe,
so the service, the session and the credentials are per thread.
"""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import google.auth.exceptions
import google.auth.transport.requests
import google_auth_httplib2
import httplib2
import requests
from googleapiclient import discovery, discovery_cache
from googleapiclient.errors import HttpError
from googleapiclient.http import build_http

from ..base import DestinationError, RetryableError
from .auth import DriveCredentials
from .config import DriveConfig
from .errors import DriveErrors

T = TypeVar("T")


class DriveClient:
    def __init__(self, config: DriveConfig, credentials: DriveCredentials, errors: DriveErrors):
        self.cfg = config
        self.creds = credentials
        self.errors = errors
        self._local = threading.local()

    def service(self) -> Any:
        service = getattr(self._local, "service", None)
        if service is None:
            doc = json.loads(discovery_cache.get_static_doc("drive", "v3") or "{}")
            doc["rootUrl"] = self.cfg.root
            doc["mtlsRootUrl"] = self.cfg.root
            doc["baseUrl"] = self.cfg.root + doc["servicePath"]
            http = build_http()  # plain httplib2.Http() would treat 308 as a redirect
            http.timeout = self.cfg.timeout
            authed = google_auth_httplib2.AuthorizedHttp(self.credentials(), http=http)
            service = discovery.build_from_document(doc, http=authed)
            self._local.service = service
        return service

    def credentials(self) -> Any:
        creds = getattr(self._local, "credentials", None)
        if creds is None:
            creds = self._local.credentials = self.creds.build()
        return creds

    def session(self) -> google.auth.transport.requests.AuthorizedSession:
        session = getattr(self._local, "session", None)
        if session is None:
            session = google.auth.transport.requests.AuthorizedSession(self.credentials())  # type: ignore[no-untyped-call]
            self._local.session = session
        return session

    def execute(self, what: str, request: Any) -> Any:
        """Run one discovery-client request without the client's own retries (ours are tenacity's)."""
        return self.call(what, lambda: request.execute(num_retries=0))

    def call(self, what: str, fn: Callable[[], T]) -> T:
        """Run one API call, translating every failure into a DestinationError naming the fix."""
        try:
            return fn()
        except DestinationError:
            raise
        except HttpError as exc:
            raise self.errors.http_error(what, exc.status_code, exc.content, exc.resp) from None
        except google.auth.exceptions.RefreshError as exc:
            raise self.errors.refresh_error(exc) from None
        except google.auth.exceptions.TransportError as exc:
            raise RetryableError(
                f"{what}: cannot reach the Drive token endpoint ({type(exc).__name__})"
            ) from None
        except (
            OSError,
            http.client.HTTPException,
            httplib2.HttpLib2Error,
            requests.RequestException,
        ) as exc:
            raise RetryableError(
                f"{what}: network error talking to Google Drive ({type(exc).__name__})"
            ) from None

    def put_chunk(self, uri: str, body: memoryview, headers: dict[str, str]) -> requests.Response:
        """PUT one chunk with a fresh bearer token, streaming from ``body`` without copying it.

        Not through AuthorizedSession: its refresh-and-retry after a 401 would re-send a
        consumed body. A 401 here refreshes the token and is retried by the caller's loop,
        which first asks Drive where to resume.
        """
        creds = self.credentials()
        session = self.session()
        auth_request = google.auth.transport.requests.Request(session)
        headers = dict(headers)
        creds.before_request(auth_request, "PUT", uri, headers)
        response = requests.Session.request(
            session,
            "PUT",
            uri,
            data=_Body(body) if len(body) else b"",
            headers=headers,
            timeout=self.cfg.timeout,
        )
        if response.status_code == 401:
            creds.refresh(auth_request)
            raise RetryableError("the access token expired during the upload; refreshed it, resuming")
        return response


class _Body:
    """A read-only file-like view of a chunk: requests streams it with a Content-Length."""

    def __init__(self, view: memoryview):
        self._view = view
        self._position = 0

    def __len__(self) -> int:
        return len(self._view) - self._position

    def read(self, size: int = -1) -> bytes:
        end = len(self._view) if size is None or size < 0 else min(len(self._view), self._position + size)
        data = bytes(self._view[self._position : end])
        self._position = end
        return data
