"""Question templates per edit type, and the family registries."""

import pytest
import torch

from npedit_core.backbones import backbone_class
from npedit_core.errors import NPEditError
from npedit_core.judges import QuestionTemplates, edit_questions, judge_class

REF, EDIT = torch.zeros(3, 8, 8), torch.ones(3, 8, 8)


def test_edit_and_identity_questions_show_both_images_and_want_yes():
    verify, identity = edit_questions(REF, EDIT, "make the car red", "color")
    assert verify.images[0] is REF and verify.images[1] is EDIT and verify.desired == "Yes"
    assert "make the car red" in verify.text and "identical" in verify.text  # identical images = failure
    assert identity.kind == "identity" and identity.desired == "Yes" and len(identity.images) == 2


def test_removal_asks_about_the_edited_image_alone_and_wants_no():
    verify, identity = edit_questions(REF, EDIT, "remove the dog", "remove", obj="dog")
    assert verify.images == [EDIT] and verify.desired == "No" and "dog" in verify.text
    assert identity.desired == "Yes" and "dog" in identity.text


def test_templates_can_be_overridden_per_type():
    templates = QuestionTemplates(edit="Q: {instruction}?", per_type={"style_identity": "Same scene? {instruction}"})
    verify, identity = edit_questions(REF, EDIT, "make it a watercolour", "style", templates=templates)
    assert verify.text == "Q: make it a watercolour?"
    assert identity.text == "Same scene? make it a watercolour"


@pytest.mark.parametrize(
    "args, match",
    [
        (("", "color", None), "instruction: empty"),
        (("remove it", "remove", None), "needs the name of the object"),
        (("do it", "recolour", None), "unknown edit type 'recolour'"),
    ],
)
def test_bad_questions_get_clear_errors(args, match):
    instruction, edit_type, obj = args
    with pytest.raises(NPEditError, match=match):
        edit_questions(REF, EDIT, instruction, edit_type, obj)


def test_unknown_family_suggests_the_nearest_name():
    with pytest.raises(NPEditError, match="did you mean 'flux2_klein'"):
        backbone_class("flux2-klein")
    with pytest.raises(NPEditError, match="did you mean 'qwen2_5_vl'"):
        judge_class("qwen25_vl")
