"""`medbeam demo`: export the bundled real DICOM corpus and summarise it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medbeam.cli.core import command

#: Mounted without a name (`app.add_typer(demo.app)`): its one command is `medbeam demo`.
app = typer.Typer()


@command(app, "demo", beam=False, example="medbeam demo --out demo-out")
def demo(
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("demo-out"),
    progress: Annotated[bool, typer.Option(help="Progress bars.")] = True,
) -> None:
    """Export the bundled real DICOM corpus (pydicom's test files + pydicom-data) and summarise it; then
    prepare a generated chest X-ray sample (MIMIC-CXR 2019 layout) and show its labels per view."""
    from medbeam.demo import run_cxr_demo, run_demo

    run_demo(out, progress=progress)
    run_cxr_demo(out, progress=progress)
