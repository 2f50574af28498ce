"""The `bench` command: backup_pipeline against the tools an administrator would use, on the same data.

    bash scripts/bench.sh [--quick] [--runs N] [--scale S] [--workdir DIR] [--no-doc]

Generates the dataset (``dataset.py``), loads it into PostgreSQL and a SeaweedFS server the
harness starts (``s3.py``; or an external server with ``--s3-endpoint``), then measures every
pipeline several times (median and min–max) from outside (``measure.py``): the jobs, the
baselines, and each pipeline's floor (``floors.py``: raw GET/PUT of the same objects with the
same server at the same parallelism, ``pg_dump``/``pg_restore`` alone). Each job run's event
log gives where its wall time went (``timeline.py``); one more run of backup_job and of
restore_job under py-spy gives where its CPU went (``profiles.py``). The archive
micro-benchmark (``bench_archive.py``) and the archive CLI's memory are measured too. The
goals' verdicts (``goals.py``) and ``docs/benchmarks.md`` (``report.py``, keeping its
hand-written "Archive" section) are computed from this run's figures. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from backup_pipeline.archive.keys import generate_org_secret_file
from backup_pipeline.resources.keys import BackupKeysResource

from ..fixtures.drive import SERVICE_ACCOUNT, SHARED_DRIVE_ID, DriveTestServer, write_service_account_key
from ..fixtures.ports import free_port
from ..fixtures.seaweedfs import SeaweedFSServer
from . import dataset as ds
from . import profiles
from .measure import run_measured, tree_size
from .profiles import CpuProfile
from .s3 import BenchS3, ExternalS3, start_seaweedfs
from .s3 import stop as stop_s3
from .series import MB, Series
from .timeline import newest_run_timeline

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable
DB = "bench_app"
RESTORE_DB = "bench_restore"
FLOOR_DB = "bench_floor_restore"
INSTALLATION = "bench"
NO_REFERENCES = "SELECT NULL::text, NULL::text WHERE false"
# The jobs' parallelism against S3: the backup reads small objects on 8 threads per bucket
# (services/backup_buckets.py ReadAhead.workers) and the restore puts them on 8
# (services/restore/buckets.py PUT_WORKERS); each streams an object above 2 MiB on its own.
JOB_STREAMS = 8


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.quick: bool = args.quick
        self.spec = ds.QUICK if self.quick else ds.FULL
        if args.scale is not None:
            self.spec = ds.DatasetSpec(**{**self.spec.__dict__, "pgbench_scale": args.scale})
        self.runs: int = args.runs or (1 if self.quick else 3)
        self.work = Path(args.workdir or tempfile.mkdtemp(prefix="bp-bench-"))
        self.work.mkdir(parents=True, exist_ok=True)
        self.series: dict[str, Series] = {}
        self.notes: list[str] = []
        self.profiles: dict[str, CpuProfile] = {}
        self.cprofiles: dict[str, str] = {}
        self.floor_details: dict[str, dict[str, float]] = {}
        self.s3: BenchS3 | None = None
        self.drive: DriveTestServer | None = None
        self.load_before = os.getloadavg()
        self.started = time.time()

    # --- set-up ----------------------------------------------------------------------------

    def log(self, message: str) -> None:
        print(f"[bench {time.time() - self.started:6.0f}s] {message}", flush=True)

    def setup(self) -> None:
        self.log(f"workdir {self.work}; dataset: {self.spec.describe()}")
        if self.args.s3_endpoint:
            self.s3 = ExternalS3(
                self.args.s3_endpoint,
                os.environ["BENCH_S3_ACCESS_KEY"],
                os.environ["BENCH_S3_SECRET_KEY"],
                os.environ.get("BENCH_S3_REGION", "us-east-1"),
            )
            self.s3.reset()
        else:
            self.s3 = start_seaweedfs(self.work)
        self.drive = DriveTestServer(
            port=free_port(), data_dir=self.work / "drive-data", log_path=self.work / "drive-server.log"
        )
        self.drive.start()
        t0 = time.perf_counter()
        ds.load_database(DB, self.spec.pgbench_scale)
        self.db_bytes = ds.database_bytes(DB)
        self.log(
            f"pgbench scale {self.spec.pgbench_scale}: {self.db_bytes / MB:.0f} MB in {time.perf_counter() - t0:.0f}s"
        )
        t0 = time.perf_counter()
        self.object_count, self.object_bytes = ds.load_objects(self.s3.client(), self.spec)
        self.log(
            f"{self.object_count} objects, {self.object_bytes / MB:.0f} MB loaded in {time.perf_counter() - t0:.0f}s"
        )
        self.data_bytes = self.object_bytes + self.db_bytes
        state = self.work / "state"
        state.mkdir(exist_ok=True)
        self.org_secret = state / "org-secret"
        if not self.org_secret.exists():
            generate_org_secret_file(self.org_secret)
        BackupKeysResource(org_secret_file=str(self.org_secret), state_dir=str(state)).recovery_public_key()
        self.dagster_home = self.work / "dagster-home"
        self.dagster_home.mkdir(exist_ok=True)
        (self.dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        self.age_key = self.work / "age.key"
        if not self.age_key.exists():
            subprocess.run(["age-keygen", "-o", str(self.age_key)], check=True, capture_output=True)
        self.age_recipient = subprocess.run(
            ["age-keygen", "-y", str(self.age_key)], check=True, capture_output=True, text=True
        ).stdout.strip()
        self.sa_file = write_service_account_key(self.work / "sa.json", self.drive.token_uri)

    def teardown(self) -> None:
        if self.s3 is not None:
            stop_s3(self.s3)
        if self.drive is not None:
            self.drive.stop()
        for db in (DB, RESTORE_DB, RESTORE_DB + "_base", FLOOR_DB):
            subprocess.run(["dropdb", "--if-exists", "-h", "127.0.0.1", "-U", "postgres", db], check=False)
        if not self.args.keep:
            shutil.rmtree(self.work, ignore_errors=True)

    def watch(self) -> dict[str, int]:
        assert self.s3 and self.drive and self.drive.process
        pids = {"drive": self.drive.process.pid}
        if isinstance(self.s3, SeaweedFSServer) and self.s3.pid is not None:
            pids["s3"] = self.s3.pid
        return pids

    @property
    def external_s3(self) -> bool:
        return isinstance(self.s3, ExternalS3)

    def env(self, destination: str = "local", **extra: str) -> dict[str, str]:
        assert self.s3 is not None and self.drive is not None
        env = {
            **os.environ,
            "DAGSTER_HOME": str(self.dagster_home),
            "BACKUP_PIPELINE_INSTALLATION_ID": INSTALLATION,
            "BACKUP_PIPELINE_APP_DATABASE_URL": f"postgresql://postgres@127.0.0.1:5432/{DB}",
            "BACKUP_PIPELINE_STATE_DIR": str(self.work / "state"),
            "BACKUP_PIPELINE_ORG_SECRET_FILE": str(self.org_secret),
            "BACKUP_PIPELINE_MIN_MANUAL_BACKUP_INTERVAL_MINUTES": "0",
            "BACKUP_PIPELINE_SCHEMA_VERSION_QUERY": "SELECT 'pgbench'",
            "BACKUP_PIPELINE_LOCAL_DESTINATION_PATH": str(self.work / "dest-local"),
            **self.s3.env(),
        }
        if destination == "google_drive":
            env.update(
                {
                    "BACKUP_PIPELINE_DESTINATION": "google_drive",
                    "BACKUP_PIPELINE_DRIVE_AUTH_MODE": "shared_drive",
                    "BACKUP_PIPELINE_DRIVE_CREDENTIALS_FILE": str(self.sa_file),
                    "BACKUP_PIPELINE_DRIVE_SHARED_DRIVE_ID": SHARED_DRIVE_ID,
                    "BACKUP_PIPELINE_DRIVE_API_ROOT": self.drive.url,
                    "BACKUP_PIPELINE_DRIVE_TOKEN_URI": self.drive.token_uri,
                }
            )
        else:
            env["BACKUP_PIPELINE_DESTINATION"] = "local"
        env.update(extra)
        return env

    # --- running ---------------------------------------------------------------------------

    def add(self, key: str, label: str, kind: str, group: str, data_bytes: int | None = None) -> Series:
        series = Series(key, label, kind, group, self.data_bytes if data_bytes is None else data_bytes)
        self.series[key] = series
        return series

    def measure(
        self,
        series: Series,
        command: list[str] | str,
        *,
        env: dict[str, str] | None = None,
        before: Callable[[], None] | None = None,
        output: Callable[[], int] | None = None,
        dagster: bool = False,
        inner: bool = False,
        runs: int | None = None,
    ) -> None:
        """``inner``: the command prints JSON whose ``seconds`` is the wall time to record (a floor's
        transfer alone); the process's own wall time is kept in the floor details."""
        for i in range(runs or self.runs):
            if before:
                before()
            m = run_measured(series.label, command, env=env, watch=self.watch(), capture=inner)
            if output:
                m.output_bytes = output()
            if inner:
                details = json.loads(m.stdout.strip().splitlines()[-1])
                details["process_wall_s"] = m.wall_s
                m.wall_s = float(details["seconds"])
                self.floor_details.setdefault(series.key, details)
            series.runs.append(m)
            if dagster:
                series.timelines.append(newest_run_timeline(self.dagster_home, m.started_at, m.wall_s))
            self.log(
                f"{series.label} run {i + 1}: {m.wall_s:.1f}s wall, {m.cpu_s:.1f}s cpu, peak {m.peak_rss_mb:.0f} MB "
                f"({m.largest_process()}), S3 server cpu {m.watched_cpu_s.get('s3', 0):.1f}s"
            )

    def dagster_cmd(self, job: str, config: dict[str, Any] | None = None, tag: str = "") -> list[str]:
        cmd = [
            PY,
            "-m",
            "dagster",
            "job",
            "execute",
            "-m",
            "backup_pipeline.definitions",
            "-a",
            "defs",
            "-j",
            job,
        ]
        if config is not None:
            path = self.work / f"config-{job}{tag}.json"
            path.write_text(json.dumps(config))
            cmd += ["-c", str(path)]
        return cmd

    def latest_backup_id(self) -> str:
        import dagster as dg

        from backup_pipeline import ledger

        with dg.DagsterInstance.from_config(str(self.dagster_home)) as instance:
            entry = ledger.latest_complete(instance)
        assert entry is not None, "no complete backup in the bench instance"
        return entry.backup_id

    # --- the pipelines ---------------------------------------------------------------------

    def reset_local(self) -> None:
        shutil.rmtree(self.work / "dest-local", ignore_errors=True)

    def reset_drive(self) -> None:
        assert self.drive is not None
        self.drive.reset()
        self.drive.add_shared_drive(SHARED_DRIVE_ID, {SERVICE_ACCOUNT: "organizer"})

    def bench_baselines(self) -> None:
        export = self.work / "export"
        dump = export / "db.dump"
        objects = export / "objects"
        s = self.add("pg_dump", "pg_dump -Fc → file", "baseline", "export", self.db_bytes)
        self.measure(
            s,
            f"mkdir -p {export} && pg_dump -h 127.0.0.1 -U postgres -Fc -f {dump} {DB}",
            output=lambda: dump.stat().st_size,
        )
        s = self.add(
            "export", "objects → disk (minio client GET, 1 stream)", "reference", "export", self.object_bytes
        )
        self.measure(
            s,
            [PY, "-m", "backup_pipeline_tests.bench.export_objects", self.s3_endpoint_args(), str(objects)],
            before=lambda: shutil.rmtree(objects, ignore_errors=True),
            output=lambda: tree_size(objects),
        )
        s = self.add(
            "export8",
            "objects → disk (minio client GET, 8 streams; reference, not a baseline)",
            "reference",
            "export",
            self.object_bytes,
        )
        scratch = self.work / "export-8-streams"
        self.measure(
            s,
            [
                PY,
                "-m",
                "backup_pipeline_tests.bench.export_objects",
                self.s3_endpoint_args(),
                str(scratch),
                "8",
            ],
            before=lambda: shutil.rmtree(scratch, ignore_errors=True),
            output=lambda: tree_size(scratch),
        )
        shutil.rmtree(scratch, ignore_errors=True)
        archive_gz = self.work / "baseline-gzip.tar.gz.age"
        archive_pigz = self.work / "baseline-pigz.tar.gz.age"
        for key, label, compressor, target in (
            ("gzip", "tar | gzip -1 | age", "gzip -1", archive_gz),
            ("pigz", "tar | pigz | age", "pigz", archive_pigz),
        ):
            s = self.add(key, label, "baseline", "backup")
            self.measure(
                s,
                f"tar -cf - -C {export} . | {compressor} | age -r {self.age_recipient} > {target}",
                output=lambda target=target: target.stat().st_size,  # type: ignore[misc]
            )
        archive_pigz.unlink(missing_ok=True)
        repo = self.work / "restic-repo"
        restic_env = {**os.environ, "RESTIC_PASSWORD": "bench-only", "RESTIC_REPOSITORY": str(repo)}

        def fresh_repo() -> None:
            shutil.rmtree(repo, ignore_errors=True)
            subprocess.run(["restic", "init", "-q"], env=restic_env, check=True, capture_output=True)

        s = self.add("restic1", "restic backup (first run)", "baseline", "backup")
        self.measure(
            s, f"restic backup -q {export}", env=restic_env, before=fresh_repo, output=lambda: tree_size(repo)
        )
        s = self.add("restic2", "restic backup (second run, nothing changed)", "baseline", "backup")
        self.measure(s, f"restic backup -q {export}", env=restic_env, output=lambda: tree_size(repo))
        self.restic_env = restic_env
        self.baseline_archive = archive_gz
        self.bench_read_floors(dump)

    def transfer_floors(self, mode: str, label: str, before: Callable[[], None] | None = None) -> None:
        """A raw transfer of every object (``floors.py``), on 1 and on JOB_STREAMS streams."""
        for streams in (1, JOB_STREAMS):
            s = self.add(
                f"floor_{mode}{streams}",
                f"{label}, {streams} stream{'s' if streams > 1 else ''}",
                "floor",
                "floor",
                self.object_bytes,
            )
            command = [
                PY,
                "-m",
                "backup_pipeline_tests.bench.floors",
                mode,
                self.s3_endpoint_args(),
                str(streams),
            ]
            self.measure(s, command, before=before, inner=True)

    def bench_read_floors(self, dump: Path) -> None:
        """The backup's floor: every object read raw (1 and JOB_STREAMS streams) and pg_dump alone."""
        self.transfer_floors("get", "raw GET of all objects → /dev/null")
        s = self.add("floor_pg_dump", "pg_dump -Fc → /dev/null (alone)", "floor", "floor", self.db_bytes)
        self.measure(s, f"pg_dump -h 127.0.0.1 -U postgres -Fc {DB} > /dev/null")
        self.dump_file = dump

    def s3_endpoint_args(self) -> str:
        assert self.s3 is not None
        return json.dumps(
            {
                "endpoint": self.s3.endpoint,
                "access_key": self.s3.access_key,
                "secret_key": self.s3.secret_key,
                "buckets": list(ds.BUCKETS),
                "quick": self.quick,
            }
        )

    def bench_backups(self) -> None:
        local = self.work / "dest-local"
        s = self.add("ours_local", "backup_job → local folder", "ours", "backup")
        self.measure(
            s,
            self.dagster_cmd("backup_job"),
            env=self.env("local"),
            before=self.reset_local,
            output=lambda: tree_size(local),
            dagster=True,
        )
        s = self.add("ours_second", "backup_job → local, again with nothing changed", "ours", "backup")
        before: list[int] = []
        self.measure(
            s,
            self.dagster_cmd("backup_job"),
            env=self.env("local"),
            before=lambda: before.append(tree_size(local)),
            output=lambda: tree_size(local) - before[-1],
            dagster=True,
        )
        self.local_backup_id = self.latest_backup_id()  # the restores read this set from the local folder
        assert self.drive is not None
        drive_data = self.drive.data_dir
        s = self.add("ours_drive", "backup_job → Drive test server", "ours", "backup")
        self.measure(
            s,
            self.dagster_cmd("backup_job"),
            env=self.env("google_drive"),
            before=self.reset_drive,
            output=lambda: tree_size(drive_data),
            dagster=True,
        )

        self.bench_incremental_backups()

    def bench_incremental_backups(self) -> None:
        """Issue 18: the same job with incremental object backups on, into a folder of its own
        (the restores read the full set above). Output = every byte the run added to the folder
        (database dump, bucket parts, inventories, manifest), not only the object bytes."""
        incr = self.work / "dest-incr"
        env = {
            **self.env("local"),
            "BACKUP_PIPELINE_LOCAL_DESTINATION_PATH": str(incr),
            "BACKUP_PIPELINE_INCREMENTAL_OBJECTS": "true",
        }
        s = self.add(
            "ours_incr_first", "backup_job → local, incremental on: first set (a full)", "ours", "backup"
        )
        self.measure(
            s,
            self.dagster_cmd("backup_job"),
            env=env,
            before=lambda: shutil.rmtree(incr, ignore_errors=True),
            output=lambda: tree_size(incr),
            dagster=True,
        )
        s = self.add(
            "ours_incr_same", "backup_job → local, incremental on: nothing changed", "ours", "backup"
        )
        before: list[int] = []
        self.measure(
            s,
            self.dagster_cmd("backup_job"),
            env=env,
            before=lambda: before.append(tree_size(incr)),
            output=lambda: tree_size(incr) - before[-1],
            dagster=True,
        )

    def bench_restores(self) -> None:
        assert self.s3 is not None
        backup_id = self.local_backup_id
        s3 = self.s3

        def wipe() -> None:
            s3.reset()
            subprocess.run(
                ["dropdb", "--if-exists", "-h", "127.0.0.1", "-U", "postgres", RESTORE_DB], check=True
            )

        def config(**options: Any) -> dict[str, Any]:
            values = {
                "backup_id": backup_id,
                "dry_run": False,
                "confirm": f"restore {backup_id}",
                "target_database": RESTORE_DB,
                "conflict_policy": "overwrite",
                "consistency_query": NO_REFERENCES,
                **options,
            }
            return {"ops": {"start_restore": {"config": values}}}

        env = self.env("local")
        s = self.add("ours_restore", "restore_job full (database + 3 buckets)", "ours", "restore")
        self.measure(
            s,
            self.dagster_cmd("restore_job", config(scope="full"), "-full"),
            env=env,
            before=wipe,
            dagster=True,
        )
        media = self.spec.media_bytes - self.spec.large_object_bytes
        s = self.add(
            "ours_restore_bucket", f"restore_job one bucket ({ds.BUCKET_MEDIA})", "ours", "restore", media
        )
        self.measure(
            s,
            self.dagster_cmd("restore_job", config(scope="files", buckets=[ds.BUCKET_MEDIA]), "-bucket"),
            env=env,
            before=wipe,
            dagster=True,
        )
        s = self.add(
            "ours_restore_files",
            "restore_job files (3 buckets, no database)",
            "ours",
            "restore",
            self.object_bytes,
        )
        self.measure(
            s,
            self.dagster_cmd("restore_job", config(scope="files"), "-files"),
            env=env,
            before=wipe,
            dagster=True,
        )

        out = self.work / "restored"
        base_db = RESTORE_DB + "_base"

        def wipe_base() -> None:
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            subprocess.run(
                ["dropdb", "--if-exists", "-h", "127.0.0.1", "-U", "postgres", base_db], check=True
            )

        s = self.add("base_restore", "age -d | gunzip | tar x + pg_restore", "baseline", "restore")
        self.measure(
            s,
            f"age -d -i {self.age_key} {self.baseline_archive} | gunzip | tar -x -C {out} && "
            f"createdb -h 127.0.0.1 -U postgres {base_db} && "
            f"pg_restore -h 127.0.0.1 -U postgres --no-owner -d {base_db} {out}/db.dump",
            before=wipe_base,
        )
        s = self.add(
            "base_restore_bucket",
            f"age -d | gunzip | tar x objects/{ds.BUCKET_MEDIA}",
            "baseline",
            "restore",
            media,
        )
        self.measure(
            s,
            f"age -d -i {self.age_key} {self.baseline_archive} | gunzip | tar -x -C {out} ./objects/{ds.BUCKET_MEDIA}",
            before=wipe_base,
        )
        s = self.add("restic_restore", "restic restore (all files + dump file)", "baseline", "restore")
        self.measure(s, f"restic restore -q latest --target {out}", env=self.restic_env, before=wipe_base)

        # The same tools taken to where a restore must put the data: the objects back into S3
        # (one minio-client stream, as the export baseline), the dump into PostgreSQL.
        def wipe_all() -> None:
            wipe()
            wipe_base()

        upload = f"{PY} -m backup_pipeline_tests.bench.import_objects {shlex.quote(self.s3_endpoint_args())}"
        s = self.add(
            "base_restore_s3",
            "age -d | gunzip | tar x + objects → S3 (1 stream) + pg_restore",
            "baseline",
            "restore",
        )
        self.measure(
            s,
            f"age -d -i {self.age_key} {self.baseline_archive} | gunzip | tar -x -C {out} && "
            f"{upload} {out}/objects && "
            f"createdb -h 127.0.0.1 -U postgres {base_db} && "
            f"pg_restore -h 127.0.0.1 -U postgres --no-owner -d {base_db} {out}/db.dump",
            before=wipe_all,
        )
        s = self.add(
            "restic_restore_s3",
            "restic restore + objects → S3 (1 stream)",
            "baseline",
            "restore",
            self.object_bytes,
        )
        objects_dir = f"{out}{self.work / 'export' / 'objects'}"
        self.measure(
            s,
            f"restic restore -q latest --target {out} --include {self.work / 'export' / 'objects'} && "
            f"{upload} {objects_dir}",
            env=self.restic_env,
            before=wipe_all,
        )
        wipe_all()
        self.bench_write_floors(wipe)

    def bench_write_floors(self, wipe: Callable[[], None]) -> None:
        """The restore's floor: every object PUT from memory (1 and JOB_STREAMS streams), pg_restore alone."""
        self.transfer_floors("put", "raw PUT of all objects from memory", before=wipe)

        def drop_floor_db() -> None:
            subprocess.run(
                ["dropdb", "--if-exists", "-h", "127.0.0.1", "-U", "postgres", FLOOR_DB], check=True
            )

        s = self.add(
            "floor_pg_restore",
            "pg_restore of the dump file into a new database (alone)",
            "floor",
            "floor",
            self.db_bytes,
        )
        self.measure(
            s,
            f"createdb -h 127.0.0.1 -U postgres {FLOOR_DB} && "
            f"pg_restore -h 127.0.0.1 -U postgres --no-owner -d {FLOOR_DB} {self.dump_file}",
            before=drop_floor_db,
        )
        drop_floor_db()

    def bench_archive(self) -> None:
        """Issue 3's goal, measured by the archive engineer's micro-benchmark (its own 60/40 dataset)."""
        gib = 0.05 if self.quick else 1.0
        rows: dict[str, list[tuple[float, float, float]]] = {}
        pattern = re.compile(r"^(.+?) +([\d.]+) s +([\d.]+) MB/s +out +([\d.]+) MB +rss +([\d.]+) MB")
        for i in range(self.args.archive_runs or self.runs):
            workdir = self.work / "archive-bench"
            shutil.rmtree(workdir, ignore_errors=True)
            result = subprocess.run(
                [
                    PY,
                    "-m",
                    "backup_pipeline_tests.bench.bench_archive",
                    "--gib",
                    str(gib),
                    "--workdir",
                    str(workdir),
                ],
                capture_output=True,
                text=True,
                check=True,
                cwd=REPO,
            )
            shutil.rmtree(workdir, ignore_errors=True)
            for line in result.stdout.splitlines():
                match = pattern.match(line)
                if match:
                    name = match.group(1).strip()
                    rows.setdefault(name, []).append(
                        (float(match.group(2)), float(match.group(3)), float(match.group(5)))
                    )
            self.log(f"archive micro-benchmark run {i + 1}: {len(rows)} pipelines")
        self.archive_rows = {
            name: (
                statistics.median(v[0] for v in values),
                statistics.median(v[1] for v in values),
                min(v[1] for v in values),
                max(v[1] for v in values),
                max(v[2] for v in values),
            )
            for name, values in rows.items()
        }
        self.archive_gib = gib
        self.bench_archive_cli()

    def bench_archive_cli(self) -> None:
        """The offline archive CLI on the largest part of the local set: decrypt to /dev/null, verify."""
        local = self.work / "dest-local"
        parts = sorted(
            (p for p in local.glob(f"*{self.local_backup_id}*.bpenc") if "manifest" not in p.name),
            key=lambda p: p.stat().st_size,
        )
        manifest = next(local.glob(f"*{self.local_backup_id}*manifest*.bpenc"), None)
        if not parts or manifest is None:
            self.notes.append(f"archive CLI not measured: no parts of {self.local_backup_id} in {local}")
            return
        largest = parts[-1]
        cli = shlex.quote(str(Path(PY).parent / "backup-pipeline"))
        keys = f"--org-secret-file {shlex.quote(str(self.org_secret))}"
        size = largest.stat().st_size
        s = self.add(
            "cli_decrypt",
            f"backup-pipeline decrypt (largest part, {size / MB:.0f} MB) → /dev/null",
            "ours",
            "cli",
            size,
        )
        self.measure(s, f"{cli} decrypt {keys} {shlex.quote(str(largest))} > /dev/null", runs=1)
        s = self.add("cli_verify", "backup-pipeline verify --manifest (largest part)", "ours", "cli", size)
        self.measure(
            s,
            f"{cli} verify {keys} --manifest {shlex.quote(str(manifest))} {shlex.quote(str(largest))}",
            runs=1,
        )

    def profile(self, name: str, job: str, env: dict[str, str], config: dict[str, Any] | None = None) -> None:
        """One more run of ``job`` under py-spy (all processes and threads, as deployed); cProfile
        of an in-process run when py-spy is not installed."""
        cmd = self.dagster_cmd(job, config, f"-{name}-profile")
        if profiles.py_spy() is not None:
            self.profiles[name] = profiles.record(cmd, env, self.work / f"py-spy-{name}.txt")
            self.log(
                f"py-spy profile of {job} ({name}): {self.profiles[name].seconds(self.profiles[name].total):.1f} CPU s sampled"
            )
            return
        out = self.work / f"profile-{name}.prof"
        subprocess.run(
            [PY, "-m", "cProfile", "-o", str(out), *cmd[1:]],
            env={**env, "BACKUP_PIPELINE_EXECUTOR": "in_process"},
            check=True,
            capture_output=True,
        )
        self.cprofiles[name] = profiles.cprofile_text(out, REPO)
        self.notes.append(
            "py-spy is not installed (bash scripts/setup.sh --for bench): cProfile of the main thread only"
        )

    def bench_profiles(self) -> None:
        self.reset_local()
        self.profile("backup", "backup_job", self.env("local"))
        backup_id = self.latest_backup_id()
        assert self.s3 is not None
        self.s3.reset()
        subprocess.run(["dropdb", "--if-exists", "-h", "127.0.0.1", "-U", "postgres", RESTORE_DB], check=True)
        config = {
            "ops": {
                "start_restore": {
                    "config": {
                        "backup_id": backup_id,
                        "dry_run": False,
                        "confirm": f"restore {backup_id}",
                        "scope": "full",
                        "target_database": RESTORE_DB,
                        "conflict_policy": "overwrite",
                        "consistency_query": NO_REFERENCES,
                    }
                }
            }
        }
        self.profile("restore", "restore_job", self.env("local"), config)


def main() -> None:
    from . import report

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small dataset, 1 run each (checks the harness)")
    parser.add_argument(
        "--runs", type=int, default=None, help="runs per pipeline (default 3; 1 with --quick)"
    )
    parser.add_argument(
        "--archive-runs", type=int, default=None, help="runs of bench_archive (default: --runs)"
    )
    parser.add_argument("--scale", type=int, default=None, help="pgbench scale (default 20; 1 with --quick)")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--no-doc", action="store_true", help="print results, do not write docs/")
    parser.add_argument(
        "--no-profile", action="store_true", help="skip the py-spy profiles of backup_job and restore_job"
    )
    parser.add_argument(
        "--s3-endpoint",
        default=None,
        help="benchmark against this S3 server (e.g. a real MinIO) instead of the SeaweedFS it starts; credentials "
        "from BENCH_S3_ACCESS_KEY / BENCH_S3_SECRET_KEY; only the bench-* buckets are touched",
    )
    parser.add_argument(
        "--phases",
        default=None,
        help="comma-separated subset of baselines,backups,restores,archive,profiles (restores, archive and "
        "profiles need backups, restores need baselines); "
        "for iterating, the doc is written only with every phase",
    )
    parser.add_argument(
        "--chain", action="store_true", help="only issue 18's chain goals (incr_chain.py, ~15 min)"
    )
    parser.add_argument("--chain-length", type=int, default=30, help="sets in the --chain chain (default 30)")
    args = parser.parse_args()
    bench = Bench(args)
    failed = False
    try:
        bench.setup()
        if args.chain:  # a sub-mode: its JSON, Goals rows and section only (incr_chain.update_doc)
            from . import incr_chain

            incr_chain.main(bench, args.chain_length, write_doc=not args.no_doc)
            return
        phases = [bench.bench_baselines, bench.bench_backups, bench.bench_restores, bench.bench_archive]
        if not args.no_profile:
            phases.append(bench.bench_profiles)
        if args.phases:
            wanted = {f"bench_{name.strip()}" for name in args.phases.split(",")}
            phases = [p for p in phases if p.__name__ in wanted]
        for phase in phases:
            try:
                phase()
            except Exception as exc:  # the report says what failed; nothing after it is measured
                failed = True
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                bench.notes.append(
                    f"**The harness failed in `{phase.__name__}`**: {first}; later phases did not run."
                )
                bench.log(f"FAILED in {phase.__name__}: {exc}")
                break
        for goal in report.all_goals(bench):
            bench.log(
                f"issue {goal.issue}: {goal.text}: {goal.measured} → {'met' if goal.met else 'NOT MET'}"
            )
        if not args.no_doc and bench.series and not args.phases:
            report.write(bench)
    finally:
        bench.teardown()
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
