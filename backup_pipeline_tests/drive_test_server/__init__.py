"""The project's Drive v3 test server (see ``server.py`` for routes and the control API).

Run by hand: ``python -m backup_pipeline_tests.drive_test_server --port 8765 --data-dir /tmp/drive``.
"""

from .server import PRESETS, DriveServer, serve

__all__ = ["PRESETS", "DriveServer", "serve"]
