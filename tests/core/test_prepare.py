"""prepare-data: folder -> manifest through a model's generate (tiny real LLM + canned answers), and dataset converters."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from npedit_core.data.manifest import read_manifest
from npedit_core.errors import NPEditError
from npedit_core.prepare import (
    DEFAULT_MIX,
    GenRequest,
    HFGenerator,
    ParseError,
    convert_dataset,
    draw_category,
    map_edit_type,
    parse_mix,
    parse_response,
    prepare_folder,
    removed_object,
)


def _photo(path, seed, size=(40, 32)):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "photos"
    d.mkdir()
    for i in range(5):
        _photo(d / f"p{i}.png", i)
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (d / "copy_of_p0.png").write_bytes((d / "p0.png").read_bytes())
    return d


class CannedVLM:
    """Answers like a VLM would, with canned JSON; counts the prompts it saw."""

    sees_images = True

    def __init__(self, bad_for=(), verify_answer="Yes"):
        self.calls, self.bad_for, self.verify_answer = [], set(bad_for), verify_answer

    def generate(self, requests):
        self.calls.append(requests)
        out = []
        for r in requests:
            assert r.image is not None and r.image.is_file()
            if "Answer Yes or No" in r.text:
                out.append(self.verify_answer)
            elif r.image.name in self.bad_for:
                out.append("I cannot help with that.")
            else:
                out.append("```json\n" + json.dumps({
                    "source_caption": f"a photo {r.image.stem}", "instruction": f"edit {r.image.stem}: {r.text[30:60]}",
                    "object": "the cat", "edited_caption": f"a photo {r.image.stem}, edited"}) + "\n```")
        return out


def test_parse_response_json_fallback_and_errors():
    row = parse_response('Sure! {"instruction": "remove the dog", "object": "dog", "edited_caption": "a lawn", '
                         '"source_caption": "a dog on a lawn"} Hope this helps.', "remove")
    assert row == {"instruction": "remove the dog", "object": "dog", "edited_caption": "a lawn",
                   "source_caption": "a dog on a lawn"}
    row = parse_response("instruction: make the car red\nedited_caption: a red car\nsource_caption: a car", "color")
    assert row["instruction"] == "make the car red" and row["object"] == ""
    with pytest.raises(ParseError, match="object"):
        parse_response('{"instruction": "remove it", "edited_caption": "x", "source_caption": "y"}', "remove")
    with pytest.raises(ParseError, match="no JSON object"):
        parse_response("garbage", "add")
    assert parse_response('{"instruction": "a", "edited_caption": "b"}', "add", need_source_caption=False)


def test_mix_default_and_parsing():
    assert DEFAULT_MIX["remove"] == 0.25 and len(DEFAULT_MIX) == 10
    assert abs(DEFAULT_MIX["color"] - 0.0833) < 1e-3 and abs(sum(DEFAULT_MIX.values()) - 1) < 1e-9
    assert parse_mix("remove=1,add=3") == {"remove": 0.25, "add": 0.75}
    with pytest.raises(NPEditError, match="unknown edit type 'removal'"):
        parse_mix("removal=1")
    draws = [draw_category(f"img{i}", DEFAULT_MIX) for i in range(2000)]
    assert 0.2 < draws.count("remove") / 2000 < 0.3
    assert draw_category("x", DEFAULT_MIX, 0) == draw_category("x", DEFAULT_MIX, 0)


def test_folder_to_manifest_reports_bad_and_duplicate_images(tmp_path, folder):
    out = tmp_path / "data" / "train.jsonl"
    gen = CannedVLM(bad_for={"p3.png"})
    report = prepare_folder(folder, out, gen, batch_size=2, seed=0)
    assert report.written == 4
    reasons = {r.image.rsplit("/", 1)[-1]: r.reason for r in report.rejects}
    assert reasons["broken.jpg"].startswith("unreadable")
    assert "unusable model answer" in reasons["p3.png"]
    assert [d[0].rsplit("/", 1)[-1] for d in report.duplicates] == ["p0.png"] or \
        [d[0].rsplit("/", 1)[-1] for d in report.duplicates] == ["copy_of_p0.png"]
    assert max(len(c) for c in gen.calls) == 2  # batched
    records = read_manifest(out, require_source_caption=True)  # the manifest format the trainer reads
    assert len(records) == 4 and all(r.edited_caption.endswith("edited") for r in records)
    rejects = [json.loads(line) for line in out.with_name("train.rejects.jsonl").read_text().splitlines()]
    assert {r["image"].rsplit("/", 1)[-1] for r in rejects} == {"broken.jpg", "p3.png"}


def test_resume_continues_where_it_stopped(tmp_path, folder):
    out = tmp_path / "train.jsonl"
    first = prepare_folder(folder, out, CannedVLM(), batch_size=2, limit=2)
    assert first.written == 2
    with out.open("a") as f:
        f.write('{"image": "torn')  # a kill in the middle of a write
    gen = CannedVLM()
    second = prepare_folder(folder, out, gen, batch_size=2)
    assert second.resumed == 2 and second.written == 3
    assert sum(len(c) for c in gen.calls) == 3  # only the images not done before were asked about
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 5 and len({r["image"] for r in rows}) == 5
    third = prepare_folder(folder, out, CannedVLM())
    assert third.written == 0 and third.resumed == 5


def test_duplicate_instruction_and_verification(tmp_path, folder):
    class Same(CannedVLM):
        def generate(self, requests):
            return ['{"instruction": "Add a hat.", "object": "hat", "edited_caption": "c", "source_caption": "s"}'] * len(requests)

    report = prepare_folder(folder, tmp_path / "a.jsonl", Same(), edits_per_image=2, mix="add=1")
    assert report.written == 5  # the second edit of each image repeats the first
    assert sum("duplicate instruction" in r.reason for r in report.rejects) == 5

    report = prepare_folder(folder, tmp_path / "b.jsonl", CannedVLM(verify_answer="No, it does not."), verify=True)
    assert report.written == 0 and sum("VLM verification" in r.reason for r in report.rejects) == 5


def test_text_only_llm_generate_plumbing(tmp_path, folder, qwen_tokenizer_path):
    """A tiny random Qwen3ForCausalLM through the real generate path: garbage text, rejected by name, never crashing."""
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    tok = AutoTokenizer.from_pretrained(qwen_tokenizer_path)
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(Qwen3Config(vocab_size=151936, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1, head_dim=16))
    gen = HFGenerator(model, tok, max_new_tokens=6)
    assert not gen.sees_images
    answers = gen.generate([GenRequest("a short prompt"), GenRequest("a much longer prompt than the first one, padded")])
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)

    (folder / "p4.txt").write_text("a red square")
    captions = tmp_path / "captions.jsonl"
    captions.write_text(json.dumps({"image": "p1.png", "caption": "noise"}) + "\n")
    report = prepare_folder(folder, tmp_path / "t.jsonl", gen, captions=captions, batch_size=4)
    reasons = {r.image.rsplit("/", 1)[-1]: r.reason for r in report.rejects}
    assert "no source caption" in reasons["p2.png"]  # no sidecar, not in the captions file
    assert "unusable model answer" in reasons["p4.png"]  # random weights write garbage
    assert "unusable model answer" in reasons["p1.png"] and "p0.png" not in reasons  # p0: a copy, listed as duplicate
    assert report.written == 0


def test_pico_banana_and_gpt_image_edit_converters(tmp_path):
    root = tmp_path / "openimages"
    root.mkdir()
    _photo(root / "a.jpg", 0)
    _photo(root / "b.jpg", 1)
    pico = tmp_path / "sft.jsonl"
    rows = [
        {"open_image_input_url": "https://x/a.jpg", "text": "Remove the red flag from the sky.",
         "output_image": "images/positive-edit/1.png", "edit_type": "Remove an existing object", "summarized_text": "flag gone"},
        {"open_image_input_url": "https://x/b.jpg", "local_input_image": "b.jpg", "text": "Change the car's color to blue",
         "output_image": "images/positive-edit/2.png", "edit_type": "Change an object's attribute (e.g., color)"},
        {"open_image_input_url": "https://x/missing.jpg", "text": "Add a cat", "output_image": "o.png", "edit_type": "Add"},
        {"open_image_input_url": "https://x/a.jpg", "text": "Remove the red flag from the sky.", "output_image": "o3.png",
         "edit_type": "Remove an existing object"},
    ]
    pico.write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json\n")
    out = tmp_path / "m" / "pico.jsonl"
    report = convert_dataset(pico, root, out, layout="pico-banana")
    assert report.written == 2 and len(report.duplicates) == 1
    msgs = [r.reason for r in report.rejects]
    assert any("row 3" in m and "missing.jpg" in m for m in msgs) and any("row 5" in m for m in msgs)
    recs = read_manifest(out)
    assert recs[0].edit_type == "remove" and recs[0].object == "red flag"
    assert recs[1].edit_type == "color"
    assert "positive-edit" not in out.read_text()  # target images are ignored

    gpt = tmp_path / "omniedit_gpt.json"
    gpt.write_text(json.dumps([
        {"dataset_source": "omniedit", "task": "addition", "input": "a.jpg", "output": "output/1.png",
         "instruction": "Add a boat on the lake", "instruction_type": "original", "input_description": "a lake"},
        {"dataset_source": "omniedit", "task": "removal", "input": "b.jpg", "output": "output/2.png",
         "instruction": "Make it vanish", "instruction_type": "original", "input_description": "a car"},
    ]))
    report = convert_dataset(gpt, root, tmp_path / "gpt.jsonl", layout="gpt-image-edit")
    assert report.written == 1 and "cannot read the removed object" in report.rejects[0].reason
    rec = read_manifest(tmp_path / "gpt.jsonl", require_source_caption=True)[0]
    assert rec.edit_type == "add" and rec.source_caption == "a lake" and rec.edited_caption == "Add a boat on the lake"


def test_edit_type_mapping_and_object():
    assert map_edit_type("Remove an existing object") == "remove"
    assert map_edit_type("Replace one object category with another") == "replace"
    assert map_edit_type("Change the background") == "background"
    assert map_edit_type("Apply an artistic style") == "style"
    assert map_edit_type("something odd") == "other"
    assert removed_object("Please remove the two bicycles near the wall") == "two bicycles"
    assert removed_object("make it brighter") is None


def test_cli_prepare_data_from_dataset(tmp_path, capsys):
    from train_cli.cli import main

    _photo(tmp_path / "a.jpg", 0)
    meta = tmp_path / "sft.jsonl"
    meta.write_text(json.dumps({"open_image_input_url": "https://x/a.jpg", "text": "Add a red kite in the sky",
                                "output_image": "images/1.png", "edit_type": "Add a new object to the scene"}) + "\n"
                    + json.dumps({"open_image_input_url": "https://x/zz.jpg", "text": "Add a cat", "edit_type": "Add"}) + "\n")
    out = tmp_path / "train.jsonl"
    assert main(["prepare-data", "--dataset", "pico-banana", "--metadata", str(meta), "--image-root", str(tmp_path),
                 "-o", str(out)]) == 0
    captured = capsys.readouterr()
    assert "1 new rows" in captured.out and "sft.jsonl row 2" in captured.err and "zz.jpg" in captured.err
    assert read_manifest(out)[0].edit_type == "add"
    assert main(["prepare-data", "-o", str(out)]) == 2  # neither --images nor --dataset
    assert "either --images" in capsys.readouterr().err
