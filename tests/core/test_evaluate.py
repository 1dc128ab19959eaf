"""eval: GEdit-Bench reading (fixture in the benchmark's format), VIEScore-style scoring, editor adapters."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from npedit_core.errors import NPEditError
from npedit_core.evaluate import (
    GEDIT_TASK_TYPES,
    NPEditEditor,
    PipelineEditor,
    evaluate,
    read_gedit_bench,
    summarise,
    viescore,
)

ROWS = [  # (key, task_type, language, instruction)
    ("a1", "color_alter", "en", "make the car red"),
    ("a2", "subject-remove", "en", "remove the dog"),
    ("a3", "color_alter", "en", "make the sky green"),
    ("c1", "color_alter", "cn", "把车变成红色"),
]


def _png(seed: int, size=(80, 64)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def bench_jsonl(tmp_path):
    """GEdit-Bench fields, images as files next to the metadata (an exported local copy)."""
    d = tmp_path / "gedit"
    (d / "images").mkdir(parents=True)
    lines = []
    for i, (key, task, lang, text) in enumerate(ROWS):
        (d / "images" / f"{key}.png").write_bytes(_png(i))
        lines.append(json.dumps({"key": key, "task_type": task, "instruction": text, "instruction_language": lang,
                                 "input_image": f"images/{key}.png", "input_image_raw": f"images/{key}.png"}))
    (d / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return d / "metadata.jsonl"


def test_reads_hub_parquet_layout(tmp_path):
    """The hub's layout: data/train-*.parquet with images as {"bytes", "path"} structs."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    cols = {k: [] for k in ("key", "task_type", "instruction", "instruction_language", "input_image", "input_image_raw")}
    for i, (key, task, lang, text) in enumerate(ROWS):
        for k, v in zip(("key", "task_type", "instruction", "instruction_language"), (key, task, text, lang)):
            cols[k].append(v)
        cols["input_image"].append({"bytes": _png(i), "path": None})
        cols["input_image_raw"].append({"bytes": _png(i), "path": None})
    (tmp_path / "data").mkdir()
    pq.write_table(pa.table(cols), tmp_path / "data" / "train-00000-of-00001.parquet")
    samples = read_gedit_bench(tmp_path)
    assert [s.key for s in samples] == ["a1", "a2", "a3"]  # English only
    assert samples[0].image.size == (80, 64)
    assert len(read_gedit_bench(tmp_path, language=None)) == 4


def test_bench_errors_name_file_and_row(tmp_path, bench_jsonl):
    assert [s.task_type for s in read_gedit_bench(bench_jsonl, task_types=["subject-remove"])] == ["subject-remove"]
    assert len(GEDIT_TASK_TYPES) == 11
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"key": "x", "task_type": "color_alter", "instruction_language": "en", "input_image": "a.png"}) + "\n")
    with pytest.raises(NPEditError, match=r"bad.jsonl row 1: missing instruction"):
        read_gedit_bench(bad)
    bad.write_text(json.dumps({"key": "x", "task_type": "recolor", "instruction": "i", "instruction_language": "en",
                               "input_image": "a.png"}) + "\n")
    with pytest.raises(NPEditError, match=r"row 1: task_type 'recolor'"):
        read_gedit_bench(bad)
    bad.write_text(json.dumps({"key": "x", "task_type": "color_alter", "instruction": "i", "instruction_language": "en",
                               "input_image": "gone.png"}) + "\n")
    with pytest.raises(NPEditError, match=r"row 1: input_image: file not found: .*gone.png"):
        read_gedit_bench(bad)


class FixedJudge:
    """p_yes answers in order, to check the score arithmetic."""

    def __init__(self, p):
        self.p, self.asked = p, []

    def p_yes(self, questions):
        self.asked.append(questions)
        return torch.tensor(self.p)


def test_viescore_definition():
    img = Image.new("RGB", (16, 16))
    judge = FixedJudge([0.9, 0.4, 0.8, 1.0])
    s = viescore(judge, img, img, "make it red")
    assert s["SC"] == pytest.approx(4.0) and s["PQ"] == pytest.approx(8.0)
    assert s["O"] == pytest.approx(math.sqrt(32.0))
    qs = judge.asked[0]
    assert [len(q.images) for q in qs] == [2, 2, 1, 1] and "make it red" in qs[0].text
    summary = summarise([{"task_type": "a", "SC": 2, "PQ": 8, "O": 4}, {"task_type": "a", "SC": 4, "PQ": 4, "O": 4},
                         {"task_type": "b", "SC": 10, "PQ": 10, "O": 10}])
    assert summary["per_task_type"]["a"]["SC"] == 3 and summary["overall"]["O"] == 6 and summary["macro"]["O"] == 7


def test_eval_ours_and_flux2_pipeline_side_by_side(tmp_path, bench_jsonl, qwen_tokenizer_path):
    """Our editor and a diffusers Flux2KleinPipeline loaded from a local folder, same steps, scored by a tiny judge."""
    import diffusers

    from npedit_core.backbones.flux2_klein import Flux2KleinBackbone
    from npedit_core.judges.qwen2_5_vl import Qwen25VLJudge

    bb = Flux2KleinBackbone.tiny(seed=0, tokenizer_path=qwen_tokenizer_path)
    sched = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False)
    pipe = diffusers.Flux2KleinPipeline(scheduler=sched, vae=bb.vae, text_encoder=bb.text_encoder, tokenizer=bb.tokenizer,
                                        transformer=bb.transformer, is_distilled=True)
    folder = tmp_path / "flux2-klein-tiny"
    pipe.save_pretrained(folder)
    other = PipelineEditor.from_pretrained(folder, dtype="float32", steps=2)
    assert other.name == "flux2-klein-tiny" and type(other.pipe).__name__ == "Flux2KleinPipeline"
    ours = NPEditEditor(bb, steps=2)

    samples = read_gedit_bench(bench_jsonl)
    judge = Qwen25VLJudge.tiny(seed=0, tokenizer_path=qwen_tokenizer_path)
    out = tmp_path / "eval"
    results = evaluate(samples, [ours, other], judge, out)
    for name in ("npedit", "flux2-klein-tiny"):
        r = results[name]
        assert r["steps"] == 2 and r["summary"]["overall"]["n"] == 3
        assert set(r["summary"]["per_task_type"]) == {"color_alter", "subject-remove"}
        for row in r["scores"]:
            assert 0 <= row["SC"] <= 10 and 0 <= row["PQ"] <= 10
            assert row["O"] == pytest.approx(math.sqrt(row["SC"] * row["PQ"]))
        edited = Image.open(out / name / "fullset" / "color_alter" / "en" / "a1.png")
        assert edited.size == (80, 64)  # the input's size
    table = (out / "results.md").read_text()
    assert "npedit SC" in table and "flux2-klein-tiny O" in table and "| subject-remove |" in table
    assert set(json.loads((out / "results.json").read_text())) == {"npedit", "flux2-klein-tiny"}

    class Exploding:
        name, steps = "npedit", 2

        def edit(self, *a):
            raise AssertionError("a scored sample was edited again")

    again = evaluate(samples, [Exploding()], judge, out)  # resumes: everything is already scored
    assert again["npedit"]["summary"] == results["npedit"]["summary"]


def test_unknown_pipeline_class_is_an_error(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(NPEditError, match="StableDiffusionPipeline; supported: FluxKontextPipeline"):
        PipelineEditor.from_pretrained(tmp_path)
    with pytest.raises(NPEditError, match="no model_index.json"):
        PipelineEditor.from_pretrained(tmp_path / "nothing")


def test_cli_eval(tmp_path, bench_jsonl, qwen_tokenizer_path, capsys):
    """The whole command on the config's tiny models (model.path and judge.path unset), one sample, one step."""
    from train_cli.cli import main

    out = tmp_path / "ev"
    assert main(["eval", "--bench", str(bench_jsonl), "-o", str(out), "--limit", "1", "--steps", "1"]) == 0
    assert "npedit: SC" in capsys.readouterr().out
    assert json.loads((out / "results.json").read_text())["npedit"]["steps"] == 1
    assert main(["eval", "--bench", str(bench_jsonl), "--skip-ours"]) == 2
    assert main(["eval", "--bench", str(tmp_path / "none.jsonl")]) == 2
    assert "none.jsonl" in capsys.readouterr().err
