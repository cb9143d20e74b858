"""The wheel carries the console's templates and static files, so `pip install` then `sluicegate serve` shows it."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONSOLE = ROOT / "src" / "sluicegate" / "console"


def test_the_wheel_holds_every_template_and_static_file(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "hatchling", "build", "-t", "wheel", "-d", str(tmp_path)],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("sluicegate-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    wanted = {
        f"sluicegate/console/{path.relative_to(CONSOLE).as_posix()}"
        for folder in ("templates", "static")
        for path in (CONSOLE / folder).iterdir()
    }
    assert len(wanted) > 15 and wanted <= names, sorted(wanted - names)
