"""Build `tutorial.ipynb` from `tutorial.py`, the one source of the tutorial (run by hand after editing it;
tests/test_tutorial.py fails when the notebook is out of date).

    .venv/bin/python docs/tutorial/build_notebook.py [--check]

`tutorial.py` is in the "percent" format Jupyter tools know (jupytext, VS Code, Spyder): `# %%` starts a
code cell, `# %% [markdown]` a markdown cell whose lines are comments. The notebook is written without
outputs, so it changes only when the script does.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "tutorial.py"
NOTEBOOK = HERE / "tutorial.ipynb"


def cells(source: str) -> list[nbformat.NotebookNode]:
    """The script's cells: text between `# %%` markers, markdown ones uncommented."""
    out: list[nbformat.NotebookNode] = []
    kind, lines = None, []

    def flush() -> None:
        text = "\n".join(lines).strip("\n")
        if kind == "markdown":
            out.append(nbformat.v4.new_markdown_cell("\n".join(line[2:] if line.startswith("# ") else line.lstrip("#")
                                                               for line in text.splitlines())))  # fmt: skip
        elif kind == "code" and text:
            out.append(nbformat.v4.new_code_cell(text))

    for line in source.splitlines():
        if line.startswith("# %%"):
            flush()
            kind, lines = ("markdown" if "[markdown]" in line else "code"), []
        else:
            lines.append(line)
    flush()
    return out


def notebook() -> str:
    nb = nbformat.v4.new_notebook(cells=cells(SCRIPT.read_text()))
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    for index, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{index}"  # stable ids: the file changes only when the script does
    return nbformat.writes(nb) + "\n"


if __name__ == "__main__":
    text = notebook()
    if "--check" in sys.argv:
        sys.exit(0 if NOTEBOOK.exists() and NOTEBOOK.read_text() == text else f"{NOTEBOOK} is out of date: rebuild it")
    NOTEBOOK.write_text(text)
    print(f"wrote {NOTEBOOK} ({len(nbformat.reads(text, 4).cells)} cells)")
