"""The S3 server of a benchmark: SeaweedFS started by the harness, or an external one.

The harness starts ``weed mini`` (``fixtures/seaweedfs.py``) on its own data directory and
measures its CPU beside each pipeline; ``--s3-endpoint`` points it at a server it does not run
(e.g. a production MinIO), whose CPU is not measured.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from minio import Minio
from minio.deleteobjects import DeleteObject

from ..fixtures.s3_servers import s3_settings_env
from ..fixtures.seaweedfs import SeaweedFSServer
from . import dataset as ds


@dataclass
class ExternalS3:
    """An S3 server the harness does not run (``--s3-endpoint``, e.g. a real MinIO).

    Only the benchmark's own buckets are ever created, emptied or removed there, and only they
    are backed up (``BACKUP_PIPELINE_BUCKETS_INCLUDE``). Its CPU time is not measured.
    """

    endpoint: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"
    process: None = None
    kind: str = "external"

    def client(self) -> Minio:
        url = urlsplit(self.endpoint)
        return Minio(
            url.netloc,
            access_key=self.access_key,
            secret_key=self.secret_key,
            secure=url.scheme == "https",
            region=self.region,
        )

    def env(self) -> dict[str, str]:
        return {
            **s3_settings_env(self.endpoint, self.access_key, self.secret_key, self.region),
            "BACKUP_PIPELINE_BUCKETS_INCLUDE": ",".join(ds.BUCKETS),
        }

    def reset(self) -> None:
        """Remove the benchmark's buckets (and nothing else)."""
        client = self.client()
        for bucket in ds.BUCKETS:
            if not client.bucket_exists(bucket):
                continue
            doomed = (
                DeleteObject(o.object_name)
                for o in client.list_objects(bucket, recursive=True)
                if o.object_name
            )
            errors = list(client.remove_objects(bucket, doomed))
            if errors:
                raise RuntimeError(f"could not empty {bucket}: {errors[0]}")
            client.remove_bucket(bucket)

    def stop(self) -> None:
        """Nothing to stop: the server is not ours."""


BenchS3 = SeaweedFSServer | ExternalS3


def start_seaweedfs(work: Path) -> SeaweedFSServer:
    """``weed mini`` on ``work/s3`` (removed with the work directory)."""
    server = SeaweedFSServer(work / "s3")
    server.start()
    return server


def stop(server: BenchS3) -> None:
    if isinstance(server, SeaweedFSServer):
        server.close()
    else:
        server.stop()
