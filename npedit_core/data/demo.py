"""The built-in demo dataset: four real photos from scikit-image and a JSONL manifest of edits on them.

Enough for a quick end-to-end run (one row per edit family the judge phrases differently); not
enough to learn anything. scikit-image is only needed when this is called.
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from ..errors import NPEditError

MANIFEST_NAME = "demo.jsonl"

_SOURCE_CAPTIONS = {
    "astronaut": "a smiling astronaut in an orange spacesuit posing beside an American flag and a model "
                 "of the space shuttle, with her helmet in front of her",
    "chelsea": "a close-up of a tabby cat with green eyes and light brown striped fur",
    "coffee": "a cup of espresso on a red saucer with a small metal spoon, on a wooden table",
    "rocket": "a white rocket on its launch pad between steel towers under a dark blue evening sky",
}

# (photo, edit_type, instruction, object, edited_caption)
_EDITS = [
    ("astronaut", "add", "add a red scarf around her neck", None,
     "a smiling astronaut in an orange spacesuit wearing a red scarf around her neck, posing beside an "
     "American flag and a model of the space shuttle"),
    ("chelsea", "color", "make the cat's fur black", None,
     "a close-up of a black cat with green eyes"),
    ("coffee", "remove", "remove the spoon", "spoon",
     "a cup of espresso on a red saucer on a wooden table"),
    ("coffee", "style", "turn it into a watercolour painting", None,
     "a watercolour painting of a cup of espresso on a red saucer with a small spoon, on a wooden table"),
    ("rocket", "background", "change the sky to a sunset", None,
     "a white rocket on its launch pad between steel towers under an orange and pink sunset sky"),
]


def demo_manifest(folder: str | Path) -> Path:
    """Write the demo photos (PNG) and `demo.jsonl` into `folder`; return the manifest path.

    Rows use paths relative to `folder`, so `read_manifest(path)` finds the images wherever the
    folder is. Existing files of the same names are overwritten.
    """
    try:
        from skimage import data as skdata
    except ImportError:
        raise NPEditError("the demo dataset needs scikit-image (pip install scikit-image)") from None
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in _SOURCE_CAPTIONS:
        Image.fromarray(getattr(skdata, name)()).convert("RGB").save(folder / f"{name}.png")
    rows = [
        {"image": f"{photo}.png", "instruction": instruction, "edit_type": edit_type, "object": obj,
         "edited_caption": edited, "source_caption": _SOURCE_CAPTIONS[photo]}
        for photo, edit_type, instruction, obj, edited in _EDITS
    ]
    path = folder / MANIFEST_NAME
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path
