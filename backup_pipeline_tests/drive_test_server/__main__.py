"""``python -m backup_pipeline_tests.drive_test_server --port P --data-dir D [--shared-drive ID]``."""

from __future__ import annotations

import argparse
from pathlib import Path

from .server import serve


def main() -> None:
    parser = argparse.ArgumentParser(description="Google Drive v3 test server (HTTP).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--data-dir", type=Path, required=True, help="where uploaded bytes are stored")
    parser.add_argument(
        "--shared-drive",
        action="append",
        default=[],
        help="create a shared drive with this id where every principal is an organizer (repeatable)",
    )
    args = parser.parse_args()
    serve(args.host, args.port, args.data_dir, args.shared_drive)


if __name__ == "__main__":
    main()
