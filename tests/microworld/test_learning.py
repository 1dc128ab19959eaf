"""CI learning test: a short NP-Edit run in the micro-world raises the oracle's success (no pairs used).

Shipped weights (npedit_core/microworld/weights): teacher, judge, warm-up editor. The editor starts
from the warm-up (reference copy) and trains STEPS NP-Edit steps (judge + DMD, the micro-world recipe
`editor.SETTINGS`) on 256 scenes of which only the reference images, instructions and edited captions
are read; the oracle scores the same 50 held-out edits (10 per type, fixed noise seeds) before and after.

MEASURED is the seed noise the margin was set from: this exact run (one CPU thread, as the test sets)
with training and noise seeds 0-4. The untrained editor's success varies by 0.02 (std) from seed to
seed; every seed gained 0.10-0.14, almost all of it from removals (0.1-0.2 -> 0.6-0.8). MARGIN = 0.08
is four times that std. Not asserted, because it does not hold yet: recolour and add edits stay at 0,
and preservation falls (MEASURED's last column: shapes the instruction did not name fade too).
"""

from __future__ import annotations

import pytest
import torch

from npedit_core.microworld.editor import JUDGE_DIR, TEACHER_DIR, WARMUP_FILE, evaluate, eval_items, examples, make_trainer, write_manifest

STEPS = 40
MEASURED = {  # seed: (success before, success after, preservation before, preservation after)
    0: (0.02, 0.16, 0.768, 0.329), 1: (0.06, 0.18, 0.723, 0.324), 2: (0.06, 0.18, 0.765, 0.393),
    3: (0.04, 0.14, 0.756, 0.255), 4: (0.02, 0.14, 0.775, 0.134),
}
MARGIN = 0.08

pytestmark = pytest.mark.skipif(not (TEACHER_DIR.is_dir() and JUDGE_DIR.is_dir() and WARMUP_FILE.is_file()),
                                reason="micro-world weights not shipped")


@pytest.fixture
def one_thread():
    """The run MEASURED was taken with: one thread makes it the same float sums on any core count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_short_npedit_run_raises_oracle_success(tmp_path, one_thread):
    torch.manual_seed(0)
    items = examples(256)
    manifest = write_manifest(tmp_path / "data", items)
    evals = eval_items(10)
    trainer = make_trainer("npedit", tmp_path / "run", manifest, items, STEPS, seed=0, log=lambda *a: None)
    before, _ = evaluate(trainer.roles.editor_backbone(), evals, trainer.cfg.sampler, seed=0)
    trainer.run()
    after, _ = evaluate(trainer.roles.editor_backbone(), evals, trainer.cfg.sampler, seed=0)
    gain = after["all"]["success"] - before["all"]["success"]
    report = {k: f"{before[k]['success']:.2f} -> {after[k]['success']:.2f}" for k in before}
    assert gain >= MARGIN, f"oracle success did not rise by {MARGIN} (measured: {MEASURED}): {report}"
    assert after["remove"]["success"] - before["remove"]["success"] >= 0.3, report  # measured gains 0.5-0.6
