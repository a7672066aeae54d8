"""`storefleet doctor`: checks, one line each, of what the control plane needs on this host;
each failure says how to fix it. It reads and probes; it changes nothing but bringing the
registry's schema up to date."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select, text

from storefleet.config import Settings
from storefleet.registry.db import Registry, make_engine
from storefleet.registry.models import PortLease
from storefleet.services.ports import ephemeral_overlap, port_is_free
from storefleet.services.wiring import missing_process_modules

MIN_FREE_BYTES = 1024**3


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def _check(name: str, probe: Callable[[], tuple[bool, str, str]]) -> Check:
    try:
        ok, detail, fix = probe()
    except Exception as exc:  # noqa: BLE001 (a check that breaks is a failed check)
        return Check(name, False, f"{type(exc).__name__}: {exc}", "see the error above")
    return Check(name, ok, detail, fix)


def _run(argv: list[str]) -> tuple[int, str]:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 127, str(exc)
    return done.returncode, (done.stdout or done.stderr).strip()


def run_checks(settings: Settings) -> list[Check]:
    checks = [Check("settings", True, f"runtime {settings.runtime}, data in {settings.data_dir}")]
    registry: Registry | None = None

    def registry_check() -> tuple[bool, str, str]:
        nonlocal registry
        registry = Registry.open(settings.registry_url)  # migrates to the newest schema
        with registry.transaction() as session:
            session.execute(text("SELECT 1"))
        where = "SQLite in the data dir" if settings.database_url is None else "PostgreSQL"
        return True, f"{where}, reachable and migrated", ""

    checks.append(
        _check("registry", registry_check)
        if _reachable(settings)
        else Check(
            "registry",
            False,
            "cannot connect to STOREFLEET_DATABASE_URL",
            "start PostgreSQL or fix STOREFLEET_DATABASE_URL",
        )
    )

    def data_dir() -> tuple[bool, str, str]:
        path = settings.data_dir
        if not path.exists():
            return True, f"{path} will be made at the first start", ""
        stat = path.stat()
        mode = stat.st_mode & 0o777
        owner_ok = stat.st_uid == os.geteuid()
        private = mode & 0o066 == 0
        secrets = [p for p in (path / "secret.key", path / "admin-token") if p.exists()]
        loose = [str(p) for p in secrets if p.stat().st_mode & 0o077]
        ok = owner_ok and private and not loose
        detail = f"{path} mode {mode:o}, owner uid {stat.st_uid}"
        if loose:
            detail += f"; readable by others: {', '.join(loose)}"
        return ok, detail, f"chown {os.geteuid()} {path}; chmod 700 {path}; chmod 600 its keys"

    checks.append(_check("data dir", data_dir))
    checks.extend(_runtime_checks(settings))

    def ports() -> tuple[bool, str, str]:
        port_range = settings.ports
        leased = 0
        if registry is not None:
            with registry.transaction() as session:
                leased = int(session.scalar(select(func.count()).select_from(PortLease)) or 0)
                ours = set(session.scalars(select(PortLease.port)))
        else:
            ours = set()
        foreign = [
            p
            for p in range(port_range.first, port_range.last + 1)
            if p not in ours and not port_is_free(p)
        ]
        overlap = ephemeral_overlap(port_range)
        usage = leased / port_range.size if port_range.size else 1.0
        detail = f"{port_range}: {leased} of {port_range.size} leased ({usage:.0%})"
        if foreign:
            shown = ", ".join(map(str, foreign[:10])) + (" ..." if len(foreign) > 10 else "")
            detail += f"; in use by other programs: {shown}"
        if overlap:
            detail += f"; overlaps the ephemeral ports {overlap}"
        ok = not foreign and not overlap and usage < 0.9
        return ok, detail, "choose a free STOREFLEET_PORT_RANGE below 32768, or undeploy stores"

    checks.append(_check("port range", ports))

    def clock() -> tuple[bool, str, str]:
        if registry is None or settings.database_url is None:
            return True, f"local time {datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ}", ""
        with registry.transaction() as session:
            db_now = session.scalar(text("SELECT now()"))
        skew = abs((datetime.now(UTC) - db_now).total_seconds()) if db_now else 0.0
        return skew < 5, f"{skew:.1f} s from the registry's clock", "synchronise clocks (NTP)"

    checks.append(_check("clock", clock))

    def disk() -> tuple[bool, str, str]:
        path = settings.data_dir if settings.data_dir.exists() else settings.data_dir.parent
        free = shutil.disk_usage(path).free
        return free >= MIN_FREE_BYTES, f"{free / 1024**3:.1f} GiB free", "free disk space"

    checks.append(_check("disk", disk))
    checks.append(_check("edge", lambda: _edge(settings)))
    if registry is not None:
        registry.close()
    return checks


def _edge(settings: Settings) -> tuple[bool, str, str]:
    if not settings.edge_on:
        return True, "off (stores are reached on their ports)", ""
    where = f"https://*.{settings.base_domain}:{settings.edge_https_port} on {settings.edge_bind}"
    if settings.runtime == "docker":
        code, _ = _run(["docker", "image", "inspect", settings.edge_image])
        if code != 0:
            return False, f"image {settings.edge_image} is missing", "make images"
        return True, f"caddy in {settings.edge_image}, {where}", ""
    code, out = _run(["caddy", "version"])
    if code != 0:
        return False, "caddy is not installed", "make edge (Debian package caddy)"
    return True, f"caddy {out.split()[0] if out else ''}, {where}", ""


def _reachable(settings: Settings) -> bool:
    if settings.database_url is None:
        return True
    engine = make_engine(settings.registry_url)
    try:
        for _ in range(2):
            try:
                with engine.connect() as connection:
                    connection.execute(text("SELECT 1"))
                return True
            except Exception:  # noqa: BLE001
                time.sleep(0.5)
        return False
    finally:
        engine.dispose()


def _runtime_checks(settings: Settings) -> list[Check]:
    if settings.runtime == "process":

        def versions() -> tuple[bool, str, str]:
            missing = missing_process_modules(settings)
            known = {settings.process_default_version, *settings.process_versions}
            detail = f"versions {', '.join(sorted(known))}"
            if missing:
                shown = ", ".join(f"{v} ({m})" for v, m in missing.items())
                detail += f"; not importable: {shown}"
            return not missing, detail, "fix STOREFLEET_PROCESS_VERSIONS or install the module"

        return [_check("process runtime", versions)]

    def engine() -> tuple[bool, str, str]:
        code, out = _run(["docker", "version", "--format", "{{.Server.Version}}"])
        return code == 0, f"Docker engine {out}" if code == 0 else out, "make docker"

    def compose() -> tuple[bool, str, str]:
        code, out = _run(["docker", "compose", "version", "--short"])
        return code == 0, f"compose {out}" if code == 0 else out, "make docker"

    def images() -> tuple[bool, str, str]:
        wanted = [settings.backend_image, settings.postgres_image]
        missing = [i for i in wanted if _run(["docker", "image", "inspect", i])[0] != 0]
        detail = (
            "present: " + ", ".join(wanted) if not missing else f"missing: {', '.join(missing)}"
        )
        return not missing, detail, "make images (or docker pull them)"

    return [_check("docker engine", engine), _check("compose", compose), _check("images", images)]
