"""CI learning test: a short NP-Edit run in the micro-world raises the oracle's success (no pairs used).

Shipped weights (npedit_core/microworld/weights): teacher (with the world's own autoencoder), judge,
warm-up editor. The editor starts from the warm-up (reference copy) and trains STEPS NP-Edit steps
(judge + DMD, the micro-world recipe `editor.SETTINGS`) on 256 scenes of which only the reference images,
instructions and edited captions are read; the oracle scores the same 50 held-out edits (10 per type,
fixed noise seeds) before and after.

MEASURED is what the margins were set from: this exact run (one CPU thread, as the test sets) with
training and noise seeds 0-3. The warm-up editor copies (success 0.00 on every seed, preservation
0.92-0.94); 40 steps gained 0.04-0.08, spread over two or three edit types (background, colour, and
replace or remove), and kept 0.73-0.86 of the untouched pixels. Asserted: a gain of at least MARGIN
(the smallest measured), on at least two edit types, with preservation at least MIN_PRESERVATION.
Not asserted, because it does not hold yet: a gain on every type (add never gains here).
"""

from __future__ import annotations

import pytest
import torch

from npedit_core.microworld.editor import JUDGE_DIR, TEACHER_DIR, WARMUP_FILE, evaluate, eval_items, examples, make_trainer, write_manifest

STEPS = 40
MEASURED = {  # seed: (success before, success after, preservation before, preservation after)
    0: (0.00, 0.08, 0.917, 0.828), 1: (0.00, 0.06, 0.922, 0.818), 2: (0.00, 0.06, 0.940, 0.726),
    3: (0.00, 0.04, 0.935, 0.858),
}
MARGIN = 0.04
MIN_PRESERVATION = 0.7

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
    gained = [k for k in before if k != "all" and after[k]["success"] > before[k]["success"]]
    assert len(gained) >= 2, f"only {gained} gained: {report}"
    kept = after["all"]["preservation"]
    assert kept >= MIN_PRESERVATION, f"the editor kept only {kept:.3f} of the untouched pixels (measured 0.73-0.86)"
