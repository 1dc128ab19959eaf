"""The training-data layer: manifests, aspect buckets, image loading, resumable batches, demo data."""

import csv
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from npedit_core.data import (
    BucketBatchSampler,
    EditDataset,
    EditRecord,
    assign_bucket,
    collate,
    demo_manifest,
    load_image,
    make_buckets,
    read_manifest,
    scan_manifest,
)
from npedit_core.errors import NPEditError

FIELDS = ["image", "instruction", "edit_type", "object", "edited_caption", "source_caption"]


def _png(path, size=(24, 16), color=(200, 40, 40)):
    Image.new("RGB", size, color).save(path)
    return path


def _rows():
    return [
        {"image": "a.png", "instruction": "remove the mug", "edit_type": "remove", "object": "mug",
         "edited_caption": "an empty desk", "source_caption": "a mug on a desk"},
        {"image": "b.png", "instruction": "make the wall blue", "edit_type": "color", "object": "",
         "edited_caption": "a room with a blue wall", "source_caption": "a room with a white wall"},
    ]


@pytest.fixture
def folder(tmp_path):
    _png(tmp_path / "a.png", (24, 16))
    _png(tmp_path / "b.png", (16, 24), (10, 200, 10))
    return tmp_path


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _csv(path, rows, fields=FIELDS):
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path


# --- manifests -------------------------------------------------------------------------------------


def test_jsonl_and_csv_give_the_same_records(folder):
    from_jsonl = read_manifest(_jsonl(folder / "m.jsonl", _rows()))
    from_csv = read_manifest(_csv(folder / "m.csv", _rows()))
    assert from_jsonl == from_csv
    first, second = from_jsonl
    assert first.image == (folder / "a.png").resolve() and first.image.is_absolute()
    assert (first.width, first.height, first.row, first.object) == (24, 16, 1, "mug")
    assert (second.width, second.height, second.row, second.object) == (16, 24, 2, None)
    assert first.edited_caption == "an empty desk" and first.source_caption == "a mug on a desk"


def test_relative_images_resolve_against_image_root(tmp_path, folder):
    sub = tmp_path / "manifests"
    sub.mkdir()
    records = read_manifest(_jsonl(sub / "m.jsonl", _rows()), image_root=folder)
    assert records[0].image == (folder / "a.png").resolve()
    with pytest.raises(NPEditError, match="row 1: image: file not found: .*manifests/a.png"):
        read_manifest(sub / "m.jsonl")  # default root: the manifest's own folder


def test_aliases_and_extra_columns(folder):
    row = {"input_image": "a.png", "edit_instruction": "add a hat", "edit_category": "Add",
           "target_caption": "a man in a hat", "input_caption": "a man", "id": 7, "notes": {"x": 1}}
    (record,) = read_manifest(_jsonl(folder / "m.jsonl", [row]), require_source_caption=True)
    assert (record.instruction, record.edit_type, record.edited_caption, record.source_caption) == (
        "add a hat", "add", "a man in a hat", "a man")
    row = {"source_image": "a.png", "prompt": "add a hat", "edit_type": "add", "output_caption": "a hat"}
    assert read_manifest(_jsonl(folder / "m2.jsonl", [row]))[0].source_caption == ""


def test_a_field_given_under_two_names_is_an_error(folder):
    row = dict(_rows()[1], prompt="make it red")
    with pytest.raises(NPEditError, match=r"m.jsonl row 1: instruction: given twice, as 'instruction' and 'prompt'"):
        read_manifest(_jsonl(folder / "m.jsonl", [row]))


def test_target_image_columns_are_never_opened(folder, monkeypatch):
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda fp, *a, **k: opened.append(str(fp)) or real_open(fp, *a, **k))
    rows = [dict(r, target_image="missing_target.png", output_image="/nowhere/x.png") for r in _rows()]
    records = read_manifest(_jsonl(folder / "m.jsonl", rows))
    assert len(records) == 2
    assert opened and not any("missing_target" in p or "nowhere" in p for p in opened)


# (mutation of the second row, the field named in the error, a regex the message must contain)
BAD_ROWS = {
    "missing instruction": (lambda r: r.pop("instruction"), "instruction", "missing or empty"),
    "empty instruction": (lambda r: r.update(instruction="   "), "instruction", "missing or empty"),
    "unknown edit type": (lambda r: r.update(edit_type="colour"), "edit_type", "unknown edit type 'colour'; did you mean 'color'"),
    "removal without object": (lambda r: r.update(edit_type="remove", object=""), "object", "needs the name of the object"),
    "missing edited caption": (lambda r: r.pop("edited_caption"), "edited_caption", "missing or empty"),
    "image not found": (lambda r: r.update(image="sub/nope.png"), "image", r"file not found: /.*sub/nope\.png"),
    "corrupt image": (lambda r: r.update(image="bad.png"), "image", r"cannot read image /.*bad\.png"),
    "non-text value": (lambda r: r.update(instruction=5), "instruction", "expected text, got int"),
}


@pytest.mark.parametrize(
    "kind, fmt", [(k, f) for k in BAD_ROWS for f in ("jsonl", "csv") if not (k == "non-text value" and f == "csv")]
)
def test_each_bad_row_names_file_row_and_field(folder, kind, fmt):
    (folder / "bad.png").write_bytes(b"this is not a png")
    mutate, field, message = BAD_ROWS[kind]
    rows = _rows()
    mutate(rows[1])
    path = _jsonl(folder / "m.jsonl", rows) if fmt == "jsonl" else _csv(folder / "m.csv", rows)
    where = "row 2" if fmt == "jsonl" else r"row 2 \(line 3\)"  # a CSV's header is line 1
    with pytest.raises(NPEditError, match=rf"^{folder}/m\.{fmt} {where}: {field}: .*{message}") as exc:
        read_manifest(path)
    assert "\n" not in str(exc.value)


def test_source_caption_is_required_only_when_asked(folder):
    rows = _rows()
    rows[1]["source_caption"] = ""
    path = _jsonl(folder / "m.jsonl", rows)
    assert read_manifest(path)[1].source_caption == ""
    with pytest.raises(NPEditError, match=r"m\.jsonl row 2: source_caption: missing or empty"):
        read_manifest(path, require_source_caption=True)


@pytest.mark.parametrize("line, message", [("{not json", "malformed JSON"), ("[1, 2]", "expected a JSON object, got list")])
def test_bad_json_lines_name_the_line(folder, line, message):
    path = folder / "m.jsonl"
    path.write_text(json.dumps(_rows()[0]) + "\n\n" + line + "\n")
    with pytest.raises(NPEditError, match=rf"m\.jsonl row 2 \(line 3\): {message}"):
        read_manifest(path)


def test_file_level_errors(folder):
    with pytest.raises(NPEditError, match=r"m\.txt: unknown extension '\.txt'"):
        read_manifest(_jsonl(folder / "m.txt", _rows()))
    with pytest.raises(NPEditError, match="manifest not found: .*absent.jsonl"):
        read_manifest(folder / "absent.jsonl")
    (folder / "empty.jsonl").write_text("\n")
    with pytest.raises(NPEditError, match="empty.jsonl: the manifest has no rows"):
        read_manifest(folder / "empty.jsonl")
    with pytest.raises(NPEditError, match="image_root .*nope is not a folder"):
        read_manifest(_jsonl(folder / "m.jsonl", _rows()), image_root=folder / "nope")
    (folder / "binary.csv").write_bytes(b"image,instruction\n\xff\xfe\x00\n")
    with pytest.raises(NPEditError, match=r"binary\.csv: not UTF-8 text"):
        read_manifest(folder / "binary.csv")


def test_scan_manifest_reports_every_bad_row_and_keeps_the_good_ones(folder, caplog):
    rows = _rows() + [dict(_rows()[0], instruction=""), dict(_rows()[1], edit_type="zoom"), _rows()[1]]
    report = scan_manifest(_jsonl(folder / "m.jsonl", rows))
    assert [r.row for r in report.records] == [1, 2, 5] and not report.ok
    assert [(p.row, p.field) for p in report.problems] == [(3, "instruction"), (4, "edit_type")]
    assert "2 bad row(s) of 5" in caplog.text
    with pytest.raises(NPEditError, match="row 3: instruction"):  # read_manifest stops at the first
        read_manifest(folder / "m.jsonl")


# --- buckets and image loading -----------------------------------------------------------------------


@pytest.mark.parametrize("resolution, multiple", [(512, 16), (512, 64), (1024, 32), (500, 16)])
def test_buckets_are_multiples_with_the_target_area(resolution, multiple):
    buckets = make_buckets(resolution, multiple, max_ratio=2.0)
    assert len(buckets) == len(set(buckets)) >= 3
    for h, w in buckets:
        assert h % multiple == 0 and w % multiple == 0
        assert max(h, w) / min(h, w) <= 2.0
        assert abs(h * w - resolution**2) <= max(h, w) * multiple  # within one strip of the target area
    assert set(buckets) == {(w, h) for h, w in buckets}  # portrait and landscape alike
    assert any(h == w for h, w in buckets)
    ratios = [w / h for h, w in buckets]
    assert ratios == sorted(ratios) and ratios[0] < 0.6 and ratios[-1] > 1.7  # covers up to ~2:1


def test_make_buckets_rejects_bad_arguments():
    with pytest.raises(NPEditError, match="multiple"):
        make_buckets(8, 16)
    with pytest.raises(NPEditError, match="max_ratio"):
        make_buckets(512, 16, max_ratio=0.5)


def test_assign_bucket_follows_the_aspect_ratio():
    buckets = make_buckets(512, 16)
    h, w = assign_bucket(400, 600, buckets)  # a 3:2 landscape photo
    assert w > h and math.isclose(w / h, 1.5, rel_tol=0.05)
    h, w = assign_bucket(600, 400, buckets)
    assert h > w
    assert assign_bucket(300, 300, buckets) == (512, 512)
    assert assign_bucket(100, 1000, buckets) == max(buckets, key=lambda b: b[1] / b[0])  # beyond 2:1: the widest


def _record(path, **kw):
    return EditRecord(path, "x", "other", None, "c", "", kw.pop("row", 1), manifest="m.jsonl", **kw)


def test_load_image_is_exactly_the_bucket_and_crops_the_centre(tmp_path):
    # 300 x 100: red | green | blue thirds; a square bucket must keep only the green middle
    array = np.zeros((100, 300, 3), np.uint8)
    array[:, :100, 0] = array[:, 100:200, 1] = array[:, 200:, 2] = 255
    Image.fromarray(array).save(tmp_path / "wide.png")
    image = load_image(_record(tmp_path / "wide.png"), (48, 48))
    assert image.shape == (3, 48, 48) and image.dtype == torch.float32
    assert 0 <= image.min() and image.max() <= 1
    # the bicubic kernel reaches one source pixel past the crop, so allow a faint fringe
    assert image[1].min() > 0.9 and image[0].max() < 0.1 and image[2].max() < 0.1
    assert image[1, :, 2:-2].min() == 1.0
    upscaled = load_image(tmp_path / "wide.png", (400, 656))  # small images are scaled up to cover
    assert upscaled.shape == (3, 400, 656)


def test_load_image_rgba_grey_and_exif(tmp_path):
    Image.new("RGBA", (20, 20), (255, 0, 0, 0)).save(tmp_path / "clear.png")  # fully transparent -> white
    assert torch.allclose(load_image(tmp_path / "clear.png", (16, 16)), torch.ones(3, 16, 16))
    Image.new("L", (20, 20), 128).save(tmp_path / "grey.png")
    assert load_image(tmp_path / "grey.png", (16, 16)).shape == (3, 16, 16)
    # stored 40 wide x 20 high, red left / blue right, EXIF orientation 6 (display rotated 90 deg clockwise)
    array = np.zeros((20, 40, 3), np.uint8)
    array[:, :20, 0] = array[:, 20:, 2] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(array).save(tmp_path / "rot.jpg", exif=exif, quality=95)
    _jsonl(tmp_path / "m.jsonl", [{"image": "rot.jpg", "instruction": "x", "edit_type": "other", "edited_caption": "c"}])
    (record,) = read_manifest(tmp_path / "m.jsonl")
    assert (record.width, record.height) == (20, 40)  # displayed size, so the bucket is portrait
    image = load_image(record, (32, 16))
    assert image[0, :12].mean() > 0.9 and image[2, -12:].mean() > 0.9  # red on top, blue at the bottom


def test_load_image_names_the_row_of_a_damaged_file(tmp_path):
    full = tmp_path / "full.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(full)
    (tmp_path / "cut.png").write_bytes(full.read_bytes()[:400])  # header fine, pixel data truncated
    with pytest.raises(NPEditError, match=r"m\.jsonl row 7: image: cannot read image .*cut\.png"):
        load_image(_record(tmp_path / "cut.png", row=7, width=64, height=64), (32, 32))


# --- batches ---------------------------------------------------------------------------------------------

SIZES = [(600, 400), (400, 600), (512, 512), (900, 450)]  # (width, height): four buckets


def _records(n=23):
    return [EditRecord(f"/x/{i}.png", "x", "other", None, "c", "", i + 1, *SIZES[i % 3 if i < 20 else 3])
            for i in range(n)]


def _take(sampler, k):
    return [sampler.next_batch() for _ in range(k)]


def test_sampler_epochs_cover_every_record_once_in_same_bucket_batches():
    records, buckets = _records(), make_buckets(512, 16)
    sampler = BucketBatchSampler(records, buckets, batch_size=4, seed=3)
    # buckets hold 7, 7, 6 and 3 records: 2 + 2 + 2 + 1 batches, the last of each bucket smaller
    assert len(sampler) == 7
    batches = _take(sampler, len(sampler))
    assert sorted(i for b in batches for i in b) == list(range(len(records)))
    assert sorted(len(b) for b in batches) == [2, 3, 3, 3, 4, 4, 4]
    for batch in batches:
        assert len({sampler.bucket(i) for i in batch}) == 1
    assert sampler.state_dict() == {"epoch": 0, "position": 7}


def test_sampler_is_deterministic_and_rolls_over_epochs():
    records, buckets = _records(), make_buckets(512, 16)
    one, two = (BucketBatchSampler(records, buckets, 4, seed=3) for _ in range(2))
    run = _take(one, 20)
    assert run == _take(two, 20)
    assert run != _take(BucketBatchSampler(records, buckets, 4, seed=4), 20)
    epoch0, epoch1 = run[:7], run[7:14]
    assert epoch0 != epoch1 and sorted(sum(epoch1, [])) == list(range(len(records)))
    assert one.state_dict() == {"epoch": 2, "position": 6}


@pytest.mark.parametrize("k", [0, 3, 7, 10])
def test_sampler_resumes_exactly_mid_epoch(k):
    records, buckets = _records(), make_buckets(512, 16)
    straight = BucketBatchSampler(records, buckets, 4, seed=11)
    _take(straight, k)
    state = json.loads(json.dumps(straight.state_dict()))  # survives a checkpoint round trip
    resumed = BucketBatchSampler(records, buckets, 4, seed=11)
    resumed.load_state_dict(state)
    assert _take(resumed, 15) == _take(straight, 15)


def test_sampler_rejects_a_state_that_does_not_fit():
    sampler = BucketBatchSampler(_records(), make_buckets(512, 16), 4)
    with pytest.raises(NPEditError, match="position 99 is outside the 7 batches"):
        sampler.load_state_dict({"epoch": 1, "position": 99})
    with pytest.raises(NPEditError, match="sampler state: expected"):
        sampler.load_state_dict({"step": 3})


def test_ranks_take_disjoint_slices_that_make_up_the_global_batch():
    records, buckets, world = _records(), make_buckets(512, 16), 2
    ranks = [BucketBatchSampler(records, buckets, 4, seed=5, rank=r, world_size=world) for r in range(world)]
    plan = ranks[0].epoch_plan(0) + ranks[0].epoch_plan(1)
    seen = set()
    for global_batch in plan:
        slices = [r.next_batch() for r in ranks]
        assert sum(slices, []) == global_batch
        assert all(len(s) == len(global_batch) // world >= 1 for s in slices)  # equal, never empty
        seen.update(global_batch)
    assert seen == set(range(len(records)))
    with pytest.raises(NPEditError, match="multiple of world_size"):
        BucketBatchSampler(records, buckets, 3, rank=0, world_size=2)
    with pytest.raises(NPEditError, match="rank"):
        BucketBatchSampler(records, buckets, 4, rank=2, world_size=2)


# --- batches of tensors and the demo data ------------------------------------------------------------------


def test_collate_loads_the_sampled_records_into_a_batch(folder):
    records = read_manifest(_jsonl(folder / "m.jsonl", _rows() + [dict(_rows()[1], image="a.png")]))
    buckets = make_buckets(64, 8)
    batch = collate(records, [0, 2], buckets, num_workers=2)
    assert batch["images"].shape == (2, 3, *assign_bucket(16, 24, buckets))
    assert batch["instructions"] == ["remove the mug", "make the wall blue"]
    assert batch["edit_types"] == ["remove", "color"] and batch["objects"] == ["mug", None]
    assert batch["edited_captions"][1] == "a room with a blue wall" and batch["rows"] == [1, 3]
    assert batch["source_captions"] == ["a mug on a desk", "a room with a white wall"]
    assert torch.equal(batch["images"], collate(records, [0, 2], buckets)["images"])  # threads change nothing
    with pytest.raises(NPEditError, match=r"rows \[1, 2\] fall in different buckets"):
        collate(records, [0, 1], buckets)
    assert collate(records, [0, 1], buckets, size=(32, 32))["images"].shape == (2, 3, 32, 32)  # previews

    sampler = BucketBatchSampler(records, buckets, batch_size=2, seed=0)
    dataset = EditDataset(records, buckets)
    for _ in range(4):
        indices = sampler.next_batch()
        batch = dataset.load_batch(indices)
        assert batch["rows"] == [records[i].row for i in indices]
        assert torch.equal(batch["images"][0], dataset[indices[0]]["image"])


def test_demo_manifest_loads_and_batches(tmp_path):
    pytest.importorskip("skimage")
    path = demo_manifest(tmp_path / "demo")
    records = read_manifest(path, require_source_caption=True)
    assert {r.edit_type for r in records} >= {"remove", "add", "color", "style", "background"}
    (removal,) = [r for r in records if r.edit_type == "remove"]
    assert removal.object == "spoon" and removal.image.name == "coffee.png"
    assert all(r.image.parent == (tmp_path / "demo").resolve() and r.width >= 300 for r in records)
    buckets = make_buckets(128, 16)
    sampler = BucketBatchSampler(records, buckets, batch_size=2, seed=0)
    batch = EditDataset(records, buckets).load_batch(sampler.next_batch())
    assert batch["images"].shape[1] == 3 and 0 <= batch["images"].min() and batch["images"].max() <= 1
