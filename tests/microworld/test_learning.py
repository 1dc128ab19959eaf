"""CI learning test: a short NP-Edit run in the micro-world raises the oracle's success (no pairs used).

Shipped weights (npedit_core/microworld/weights): teacher (with the world's own autoencoder), judge,
warm-up editor. The editor starts from the warm-up (reference copy) and trains STEPS NP-Edit steps
(judge + DMD, the micro-world recipe `editor.SETTINGS`) on 256 scenes of which only the reference images,
instructions and edited captions are read; the oracle scores the same 50 held-out edits (10 per type,
fixed noise seeds) before and after.

MEASURED is what the margins were set from: this exact run (one CPU thread, as the test sets) with
training and noise seeds 0-3, on the shipped weights of 2026-12-07 (the warm-up of 12000 steps with a quarter
text-to-image, `editor.build_warmup`). The warm-up editor copies (success 0.00 on every seed; preservation
0.950-0.956); 400 steps gained 0.12-0.20, over three or four edit types (removals and background on every seed,
then adds, colour or replace), and kept 0.770-0.794 of the untouched pixels. (200 steps gained 0.06-0.10 on these
weights, 500 steps 0.18 on seeds 2 and 3 with preservation 0.71-0.75; from the 3000-step copy warm-up shipped
before, 200 steps gained 0.08-0.20 but never on adds.) Asserted: a gain of at least MARGIN, on at least three
edit types, with preservation at least MIN_PRESERVATION.
Not asserted, because it does not hold yet: a gain on every type (colour and replace stay at 0.0-0.1).
"""

from __future__ import annotations

import pytest
import torch

from npedit_core.microworld.editor import JUDGE_DIR, TEACHER_DIR, WARMUP_FILE, evaluate, eval_items, examples, make_trainer, write_manifest

STEPS = 400
MEASURED = {  # seed: (success before, success after, preservation before, preservation after, types gained)
    0: (0.00, 0.20, 0.954, 0.770, 4), 1: (0.00, 0.14, 0.954, 0.794, 3), 2: (0.00, 0.12, 0.956, 0.783, 3),
    3: (0.00, 0.14, 0.950, 0.774, 4),
}
MARGIN = 0.10  # below the smallest measured gain (0.12): one edit of 50 less still passes
MIN_TYPES = 3
MIN_PRESERVATION = 0.75

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
    assert len(gained) >= MIN_TYPES, f"only {gained} gained: {report}"
    kept = after["all"]["preservation"]
    assert kept >= MIN_PRESERVATION, f"the editor kept only {kept:.3f} of the untouched pixels (measured 0.770-0.794)"
