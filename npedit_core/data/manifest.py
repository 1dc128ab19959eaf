"""Training manifests: one row per reference image, read from JSONL or CSV and checked at the boundary.

NP-Edit trains without target images (method.md sections 1 and 6): a row holds the reference image y,
the instruction c, the edit type, for removals the object name, the edited caption c_x (DMD's teacher
prompt) and, for the warm-up stage, the reference caption c_y. Columns that name target/output images
are ignored and never opened. Every problem names the manifest file, the row and the field.
"""

from __future__ import annotations

import csv
import difflib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from PIL import Image, UnidentifiedImageError

from ..errors import NPEditError
from ..judges.prompts import EDIT_TYPES

log = logging.getLogger(__name__)

#: Accepted column names per field, canonical name first. Matching is exact (after stripping spaces).
ALIASES: dict[str, tuple[str, ...]] = {
    "image": ("image", "input_image", "source_image", "reference_image", "image_path"),
    "instruction": ("instruction", "prompt", "edit_instruction", "edit_prompt"),
    "edit_type": ("edit_type", "edit_category", "category"),
    "object": ("object", "object_name", "removed_object"),
    "edited_caption": ("edited_caption", "output_caption", "target_caption", "edit_caption"),
    "source_caption": ("source_caption", "input_caption", "reference_caption", "original_caption"),
}
#: Extensions read as JSON lines (one object per line) and as CSV (header row first).
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
CSV_SUFFIXES = (".csv",)
# EXIF orientations 5-8 rotate by 90 degrees: the displayed image has width and height swapped.
_EXIF_ORIENTATION, _TRANSPOSED = 0x0112, (5, 6, 7, 8)


@dataclass
class EditRecord:
    """One training sample. `width`/`height` are the displayed size (after EXIF rotation), read by PIL."""

    image: Path  # absolute path of the reference image y
    instruction: str  # c
    edit_type: str  # one of judges.prompts.EDIT_TYPES
    object: str | None  # the removed object (required for "remove"; kept, unused, for other types)
    edited_caption: str  # c_x, the caption of the edited image (DMD teacher prompt)
    source_caption: str  # c_y, the caption of the reference (warm-up stage); "" when not given
    row: int  # 1-based data row in the manifest (the header of a CSV is not a row)
    width: int = 0
    height: int = 0
    manifest: str = field(default="", compare=False)  # the manifest file, for later error messages

    def where(self) -> str:
        """'<manifest> row N' for error messages."""
        return f"{self.manifest} row {self.row}" if self.manifest else f"row {self.row}"


@dataclass
class ManifestProblem:
    """One bad row: `str()` is the one-line message that `read_manifest` raises."""

    path: Path
    row: int  # 1-based data row (0 = the file as a whole)
    line: int  # 1-based line in the file where the row starts
    field: str  # canonical field name, or "" for a whole-row problem (e.g. malformed JSON)
    message: str

    def __str__(self) -> str:
        where = f"{self.path}" if self.row == 0 else f"{self.path} row {self.row}"
        if self.row and self.line != self.row:
            where += f" (line {self.line})"
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


@dataclass
class ManifestReport:
    """What `scan_manifest` found: the good rows and every bad one (nothing is dropped silently)."""

    path: Path
    records: list[EditRecord] = field(default_factory=list)
    problems: list[ManifestProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def read_manifest(
    path: str | Path, image_root: str | Path | None = None, require_source_caption: bool = False
) -> list[EditRecord]:
    """Read and validate a manifest; raise `NPEditError` at the first bad row.

    Format by extension: `.jsonl`/`.json`/`.ndjson` hold one JSON object per line (blank lines are
    allowed), `.csv` has a header row. Fields and the column names accepted for each (`ALIASES`):
      image           image | input_image | source_image | reference_image | image_path
      instruction     instruction | prompt | edit_instruction | edit_prompt
      edit_type       edit_type | edit_category | category   (one of EDIT_TYPES; case-insensitive)
      object          object | object_name | removed_object  (required when edit_type is "remove")
      edited_caption  edited_caption | output_caption | target_caption | edit_caption   (required)
      source_caption  source_caption | input_caption | reference_caption | original_caption
                      (required only with `require_source_caption`, i.e. for the warm-up stage)
    Other columns are ignored; in particular target/output image columns are never opened.
    Relative image paths resolve against `image_root` (default: the manifest's folder). Each image is
    opened with PIL and its size read from the header (with the EXIF rotation), so a missing file or
    one PIL cannot identify fails here; damage further into the pixel data surfaces in `load_image`,
    again naming the file and row.
    Errors are one line: "<file> row <n>: <field>: <what is wrong>".
    """
    records = []
    for item in _scan(Path(path), image_root, require_source_caption):
        if isinstance(item, ManifestProblem):
            raise NPEditError(str(item))
        records.append(item)
    if not records:
        raise NPEditError(f"{path}: the manifest has no rows")
    return records


def scan_manifest(
    path: str | Path, image_root: str | Path | None = None, require_source_caption: bool = False
) -> ManifestReport:
    """Like `read_manifest`, but check every row: return the good records and a list of all problems.

    For cleaning a large manifest in one pass. A problem with the file itself (missing, unknown
    extension) still raises. The problems are also logged as one warning.
    """
    report = ManifestReport(Path(path))
    for item in _scan(Path(path), image_root, require_source_caption):
        (report.problems if isinstance(item, ManifestProblem) else report.records).append(item)
    if report.problems:
        shown = "\n  ".join(str(p) for p in report.problems[:10])
        more = f"\n  ... and {len(report.problems) - 10} more" if len(report.problems) > 10 else ""
        log.warning("%s: %d bad row(s) of %d:\n  %s%s", path, len(report.problems),
                    len(report.problems) + len(report.records), shown, more)
    return report


# --- reading rows ----------------------------------------------------------------------------------


class _RowError(Exception):
    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field, self.message = field, message


def _scan(path: Path, image_root, require_source_caption: bool) -> Iterator[EditRecord | ManifestProblem]:
    if not path.is_file():
        raise NPEditError(f"manifest not found: {path}")
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        rows = _jsonl_rows(path)
    elif suffix in CSV_SUFFIXES:
        rows = _csv_rows(path)
    else:
        raise NPEditError(
            f"manifest {path}: unknown extension {path.suffix!r}; use JSON lines "
            f"({', '.join(JSONL_SUFFIXES)}) or CSV (.csv)"
        )
    root = Path(image_root).expanduser() if image_root is not None else path.parent
    if not root.is_dir():
        raise NPEditError(f"manifest {path}: image_root {root} is not a folder")
    root = root.absolute()
    try:
        for row, line, data in rows:
            try:
                if isinstance(data, _RowError):
                    raise data
                yield _record(data, row, root, require_source_caption, str(path))
            except _RowError as exc:
                yield ManifestProblem(path, row, line, exc.field, exc.message)
    except UnicodeDecodeError as exc:
        raise NPEditError(f"manifest {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except csv.Error as exc:
        raise NPEditError(f"manifest {path}: not readable as CSV ({exc})") from None


def _jsonl_rows(path: Path) -> Iterator[tuple[int, int, dict | _RowError]]:
    row = 0
    with path.open(encoding="utf-8-sig") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            row += 1
            if row == 1 and line.lstrip().startswith("["):
                raise NPEditError(f"{path}: expected JSON lines (one object per line), found a JSON array")
            try:
                data = json.loads(line)
            except json.JSONDecodeError as exc:
                yield row, line_no, _RowError("", f"malformed JSON ({exc.msg} at column {exc.colno})")
                continue
            if not isinstance(data, dict):
                yield row, line_no, _RowError("", f"expected a JSON object, got {type(data).__name__}")
                continue
            yield row, line_no, data


def _csv_rows(path: Path) -> Iterator[tuple[int, int, dict | _RowError]]:
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            return
        header = [h.strip() for h in header]
        row, start = 0, reader.line_num + 1  # start: the file line where the next row begins
        for values in reader:
            if not any(v.strip() for v in values):
                start = reader.line_num + 1
                continue  # a blank line between rows
            row += 1
            if len(values) > len(header):
                yield row, start, _RowError("", f"{len(values)} cells but the header has {len(header)} columns")
            else:
                yield row, start, dict(zip(header, values))
            start = reader.line_num + 1


def _record(data: dict, row: int, root: Path, require_source_caption: bool, manifest: str) -> EditRecord:
    instruction = _text(data, "instruction", required=True)
    edit_type = _text(data, "edit_type", required=True).lower()
    if edit_type not in EDIT_TYPES:
        near = difflib.get_close_matches(edit_type, EDIT_TYPES, n=1, cutoff=0.5)
        hint = f"; did you mean '{near[0]}'?" if near else f"; expected one of {', '.join(EDIT_TYPES)}"
        raise _RowError("edit_type", f"unknown edit type {edit_type!r}{hint}")
    obj = _text(data, "object", required=False) or None
    if edit_type == "remove" and obj is None:
        raise _RowError("object", "missing; a 'remove' edit needs the name of the object to remove")
    edited_caption = _text(data, "edited_caption", required=True)
    source_caption = _text(data, "source_caption", required=require_source_caption)
    image = _text(data, "image", required=True)
    path = Path(image).expanduser()
    path = (path if path.is_absolute() else root / path).resolve()
    width, height = _image_size(path)
    return EditRecord(path, instruction, edit_type, obj, edited_caption, source_caption, row, width, height, manifest)


def _text(data: dict, name: str, required: bool) -> str:
    """The stripped text of field `name` under any of its aliases ("" when absent and not required)."""
    present = [key for key in ALIASES[name] if not _blank(data.get(key))]
    if len(present) > 1:
        raise _RowError(name, f"given twice, as {' and '.join(repr(k) for k in present)}; keep one column")
    value = data[present[0]] if present else ""
    if not isinstance(value, str):
        raise _RowError(name, f"expected text, got {type(value).__name__} {value!r}")
    value = value.strip()
    if required and not value:
        names = ", ".join(ALIASES[name])
        raise _RowError(name, f"missing or empty (accepted column names: {names})")
    return value


def _blank(value) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


#: Widest aspect ratio a training image may have: twice the buckets' 2:1, i.e. at most half of it is cropped away.
MAX_ASPECT = 4.0


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) as displayed, i.e. after the EXIF rotation that `load_image` applies."""
    if not path.is_file():
        raise _RowError("image", f"file not found: {path}")
    try:
        with Image.open(path) as im:
            width, height = im.size
            if im.getexif().get(_EXIF_ORIENTATION) in _TRANSPOSED:
                width, height = height, width
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise _RowError("image", f"cannot read image {path} ({type(exc).__name__}: {exc})") from None
    if width <= 0 or height <= 0:
        raise _RowError("image", f"image {path} has size {width}x{height}")
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise _RowError("image", f"image {path} is {width}x{height}, more than {MAX_ASPECT:g}:1; the aspect buckets "
                                 "reach 2:1, so training would see only a thin centre slice of it: crop it or drop the row")
    return width, height
