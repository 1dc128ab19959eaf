"""The judge's questions: edit-verification and identity-preservation, per edit type (method.md 2.2).

Wording is ours. Every template can be overridden from config (`QuestionTemplates`); placeholders are
`{instruction}` and `{object}`. Two rules from the method are built in:
- removals ask about the edited image alone whether the object is still there, and want "No";
- the judge is told that two identical images mean the edit failed.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch

from ..errors import NPEditError
from .base import Question

EDIT_TYPES = (
    "remove", "add", "replace", "color", "material", "background", "style", "action", "text", "shape", "other",
)

_SAME_MEANS_FAIL = "If the two images are identical, the edit was not made and the answer is No."

_EDIT_DEFAULT = (
    "The first image is the original and the second image is the result of an edit. "
    "Edit instruction: \"{instruction}\". Was this instruction carried out in the second image? "
    + _SAME_MEANS_FAIL + " Answer Yes or No."
)
_IDENTITY_DEFAULT = (
    "The first image is the original and the second image is the result of an edit. "
    "Edit instruction: \"{instruction}\". Apart from what the instruction asks to change, is the second "
    "image the same as the first (same content, layout, identity, colours and style)? Answer Yes or No."
)


@dataclass
class QuestionTemplates:
    """Question wording per edit type; `edit`/`identity` are the defaults for types without their own."""

    edit: str = _EDIT_DEFAULT
    identity: str = _IDENTITY_DEFAULT
    # Removal: the edited image alone, desired answer "No".
    remove_edit: str = "Does this image contain {object}? Answer Yes or No."
    remove_identity: str = (
        "The first image is the original and the second image is the result of removing {object}. "
        "Ignoring {object}, do the two images show the same scene with the same layout? Answer Yes or No."
    )
    style_identity: str = (
        "The first image is the original and the second image is the result of a style edit: "
        "\"{instruction}\". Does the second image keep the same content, objects and layout as the first, "
        "whatever its new style? Answer Yes or No."
    )
    background_identity: str = (
        "The first image is the original and the second image is the result of a background edit: "
        "\"{instruction}\". Are the foreground subjects of the second image the same as in the first "
        "(identity, pose, colours)? Answer Yes or No."
    )
    per_type: dict[str, str] = field(default_factory=dict)

    def template(self, edit_type: str, kind: str) -> str:
        """The template for (edit_type, kind), falling back from the specific to the general one."""
        key = f"{edit_type}_{kind}"
        if key in self.per_type:
            return self.per_type[key]
        names = {f.name for f in fields(self)}
        return getattr(self, key) if key in names else getattr(self, kind)


def check_edit_type(edit_type: str) -> str:
    if edit_type not in EDIT_TYPES:
        raise NPEditError(f"unknown edit type {edit_type!r}; expected one of {', '.join(EDIT_TYPES)}")
    return edit_type


def edit_questions(
    reference: torch.Tensor,
    edited: torch.Tensor,
    instruction: str,
    edit_type: str = "other",
    obj: str | None = None,
    templates: QuestionTemplates | None = None,
) -> list[Question]:
    """The two questions for one sample: [edit-verification, identity-preservation].

    reference, edited: (3, H, W) in [0, 1]. Removals need `obj`, the name of the removed object.
    """
    templates = templates or QuestionTemplates()
    check_edit_type(edit_type)
    if not instruction or not instruction.strip():
        raise NPEditError("instruction: empty; describe the edit to make")
    if edit_type == "remove" and not (obj and obj.strip()):
        raise NPEditError("object: a 'remove' edit needs the name of the object to remove")
    fill = dict(instruction=instruction.strip(), object=(obj or "").strip())
    edit_text = templates.template(edit_type, "edit").format(**fill)
    identity_text = templates.template(edit_type, "identity").format(**fill)
    if edit_type == "remove":
        verify = Question(edit_text, [edited], desired="No", kind="edit")
    else:
        verify = Question(edit_text, [reference, edited], desired="Yes", kind="edit")
    return [verify, Question(identity_text, [reference, edited], desired="Yes", kind="identity")]
