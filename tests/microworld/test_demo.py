"""The demo's pictures: one before/after grid per edit type, plus an overview, rows listed in demo_grid.txt."""

import torch
from PIL import Image

from npedit_core.demo import write_grids
from npedit_core.microworld.editor import eval_items
from npedit_core.microworld.world import EDIT_TYPES, render_batch


def test_demo_writes_a_grid_per_edit_type(tmp_path):
    evals = eval_items(3)  # 3 edits of each type
    before = render_batch([s for s, _ in evals])
    after = torch.zeros_like(before)
    grids = write_grids(tmp_path, evals, before, after)
    assert [p.name for p in grids] == ["demo_grid.png"] + [f"demo_grid_{t}.png" for t in EDIT_TYPES]
    rows = {p.name: Image.open(p).height for p in grids}
    assert rows["demo_grid.png"] > rows["demo_grid_color.png"]  # 10 rows against 3
    lines = (tmp_path / "demo_grid.txt").read_text().splitlines()
    assert lines[0].startswith("columns: input | target")
    for t in EDIT_TYPES:
        (line,) = [x for x in lines if x.startswith(f"demo_grid_{t}.png rows: ")]
        assert line.split(": ", 1)[1].split("; ") == [e.instruction for _, e in evals if e.edit_type == t]
