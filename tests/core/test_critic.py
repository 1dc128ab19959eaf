"""The DMD critic: fake score from an export, teacher untouched, the realism score's definition."""

import pytest
import torch

from npedit_core.backbones.z_image import ZImageBackbone
from npedit_core.critic import Critic, realism_scores
from npedit_core.errors import CheckpointError, NPEditError

from tests.core.exports import write_exports


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    folder = tmp_path_factory.mktemp("exports")
    return {
        "lora": write_exports(ZImageBackbone.tiny(seed=0), folder / "lora", lora=True),
        "full": write_exports(ZImageBackbone.tiny(seed=0), folder / "full", lora=False),
        "zero": write_exports(ZImageBackbone.tiny(seed=0), folder / "zero", lora=True, scale=0.0),
    }


@pytest.fixture(scope="module")
def image(photos):
    return photos("coffee")[:, :, ::10, ::10]  # (1, 3, 40, 60)


@pytest.mark.parametrize("layout", ["lora", "full"])
def test_teacher_is_the_base_and_fake_is_the_exported_weights(exports, layout):
    base = ZImageBackbone.tiny(seed=0)
    critic = Critic.from_export(ZImageBackbone.tiny(seed=0), exports[layout]["fake"])
    text = base.encode_text(["a cup of coffee"])
    x, t = torch.randn(1, 16, 4, 4), torch.tensor([0.5])
    with torch.no_grad():
        reference = base.velocity(x, t, text)
        assert torch.allclose(critic.teacher(x, t, text), reference, atol=1e-6)
        assert not torch.allclose(critic.fake(x, t, text), reference, atol=1e-4)
        assert torch.allclose(critic.teacher(x, t, text), reference, atol=1e-6)  # switching back restores it
    assert not any(p.requires_grad for m in critic.modules() for p in m.parameters())


def test_score_is_zero_when_fake_equals_teacher_without_cfg(exports, image):
    critic = Critic.from_export(ZImageBackbone.tiny(seed=0), exports["zero"]["fake"])  # LoRA B = 0: fake == base
    assert realism_scores(critic, image, "coffee", guidance=1.0).abs().max() < 1e-5
    assert realism_scores(critic, image, "coffee", guidance=3.5).min() > 0  # CFG alone makes them differ


def test_score_is_deterministic_per_item_and_batch_independent(exports, image):
    critic = Critic.from_export(ZImageBackbone.tiny(seed=0), exports["lora"]["fake"])
    images = torch.cat([image, image.flip(-1), 1 - image])
    scores = realism_scores(critic, images, ["coffee", "coffee", "negative coffee"])
    assert scores.shape == (3,) and scores.dtype == torch.float32 and (scores > 0).all()
    alone = realism_scores(critic, images[2:], "negative coffee")
    assert alone[0] == pytest.approx(scores[2].item(), rel=1e-4)
    assert torch.equal(realism_scores(critic, images, ["coffee", "coffee", "negative coffee"]), scores)
    assert realism_scores(critic, images[:1], "coffee", seed=1)[0] != pytest.approx(scores[0].item(), rel=1e-6)


def test_wrong_files_and_inputs_are_named(exports, image):
    with pytest.raises(CheckpointError, match="holds the 'editor' weights, not the 'fake'.*--role fake"):
        Critic.from_export(ZImageBackbone.tiny(seed=0), exports["lora"]["editor"])
    critic = Critic.from_export(ZImageBackbone.tiny(seed=0), exports["lora"]["fake"])
    with pytest.raises(NPEditError, match=r"caption\[0\]: empty"):
        realism_scores(critic, image, " ")
    with pytest.raises(NPEditError, match="times"):
        realism_scores(critic, image, "x", times=(0.0, 0.5))
    with pytest.raises(NPEditError, match="caption: 2 given for a batch of 1"):
        realism_scores(critic, image, ["a", "b"])


@pytest.mark.filterwarnings("ignore:Already found a `peft_config`")
def test_the_fake_score_is_its_own_adapter_even_when_an_editor_lora_was_loaded_after_it(exports):
    base = ZImageBackbone.tiny(seed=0)
    alone = Critic.from_export(ZImageBackbone.tiny(seed=0), exports["lora"]["fake"])
    shared = Critic.from_export(base, exports["lora"]["fake"])
    from npedit_core.export import load_editor

    load_editor(base, exports["lora"]["editor"])  # now adapter "editor" is the active one on the same base
    text = base.encode_text(["a cup of coffee"])
    x, t = torch.randn(1, 16, 4, 4), torch.tensor([0.5])
    with torch.no_grad():
        editor_before = base.velocity(x, t, text)
        torch.testing.assert_close(shared.fake(x, t, text), alone.fake(x, t, text))
        torch.testing.assert_close(shared.teacher(x, t, text), alone.teacher(x, t, text))
        torch.testing.assert_close(base.velocity(x, t, text), editor_before)  # the editor is active again after
    assert not torch.allclose(editor_before, alone.fake(x, t, text), atol=1e-4)
