"""The wheel holds the product and its runtime data, nothing else. It is built from exactly the files
the Dockerfile copies (as the image builds it), installed into a directory of its own, and used from
outside the checkout: `touchline migrate` on a fresh embedded store, the default SLA policy file."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DATA = {  # file in the wheel -> the repository file it copies
    **{f"pipeline/_data/{p.relative_to(REPO)}": p for p in sorted((REPO / "schemas").rglob("*.sql"))},
    **{f"pipeline/_data/{p.relative_to(REPO)}": p for p in sorted((REPO / "schemas").rglob("*.json"))},
    "pipeline/_data/sla-policies.yaml": REPO / "deploy" / "sla-policies.yaml",
}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("source")
    for name in re.findall(r"^COPY (\S+)", (REPO / "Dockerfile").read_text(), flags=re.M):
        origin, copy = REPO / name, source / name
        copy.parent.mkdir(parents=True, exist_ok=True)
        if origin.is_dir():
            shutil.copytree(origin, copy, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(origin, copy)
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(source)],
        check=True,
        timeout=600,
    )
    (built,) = out.glob("touchline-*.whl")
    return built


def test_the_wheel_holds_the_package_and_its_data_only(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        assert {name.split("/")[0] for name in names} == {"pipeline", "touchline-0.1.0.dist-info"}
        modules = {Path(name).stem for name in names if name.endswith(".py")}
        assert not modules & {"bench", "bench_faust_baseline", "broker", "broker_cli", "live", "live_view", "macros"}
        assert not [name for name in names if "realdata" in name]
        data = {name for name in names if name.startswith("pipeline/_data/")}
        assert data == set(DATA)
        for name, origin in DATA.items():
            assert archive.read(name) == origin.read_bytes(), name


def test_the_installed_package_migrates_and_reads_its_sla_policies(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(site), str(wheel)],
        check=True,
        timeout=300,
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOUCHLINE_", "KAFKA_", "PYTHON"))}
    env |= {"PYTHONPATH": str(site), "TOUCHLINE_CLICKHOUSE_DSN": f"chdb://{tmp_path / 'store'}"}

    def touchline(*args: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "pipeline", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    where = subprocess.run(
        [sys.executable, "-c", "import pipeline; print(pipeline.__file__)"], cwd=tmp_path, env=env, capture_output=True
    )
    assert where.stdout.decode().strip() == str(site / "pipeline" / "__init__.py")
    migrations = sorted(p.name for p in (REPO / "schemas" / "clickhouse").glob("*.sql"))
    assert touchline("migrate") == f"applied: {', '.join(migrations)}\n"
    assert touchline("migrate") == "schema is up to date\n"
    assert f"OK: SLA policies ({site / 'pipeline' / '_data' / 'sla-policies.yaml'})" in touchline("check")
