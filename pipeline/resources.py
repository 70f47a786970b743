"""Runtime data the package reads, found with importlib.resources: the ClickHouse migrations and the
event JSON Schemas (`schemas/`) and the default SLA policy file (`deploy/sla-policies.yaml`).

`pipeline/_data/` holds symlinks to those repository files, so a checkout (and an editable install)
reads, and `touchline generate` writes, the repository's own files; a wheel carries copies of them
(`[tool.setuptools.package-data]` in pyproject.toml), so an installed package needs no source tree.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def data_path(*parts: str) -> Path:
    """The file or folder `_data/<parts>` of the package, through a checkout's symlinks to its target."""
    resource = files("pipeline").joinpath("_data", *parts)
    if not isinstance(resource, Path):  # a zipped package: the migrations are globbed and read as files
        raise RuntimeError(f"touchline's data files must be on disk; found {resource!r}")
    return resource.resolve()
