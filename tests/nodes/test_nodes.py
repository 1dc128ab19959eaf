"""The nodes as adapters: tensor layouts, exact sizes, progress and previews, Cancel, errors that name inputs."""

import pytest
import torch

from tests.nodes import fake_comfy
from tests.nodes.fake_comfy import InterruptProcessingException


def nodes(pack):
    return {cls.define_schema().node_id: cls for cls in pack.node_list}


def run(pack, node_id, **inputs):
    with torch.inference_mode():  # as ComfyUI's executor runs every node
        return nodes(pack)[node_id].execute(**inputs)


def load_editor(pack, names, **overrides):
    inputs = dict(family="z_image", model=names["zimage"], text_encoder="none", vae="none", tokenizer="auto",
                  dtype="float32", weights=names["zimage_editor"], preview_decoder="none")
    return run(pack, "NPEditLoadEditor", **{**inputs, **overrides}).args[0]


@pytest.fixture(scope="module")
def models(pack, models_dir):
    _, names = models_dir
    editor = load_editor(pack, names)
    judge = run(pack, "NPEditLoadJudge", model=names["judge"], family="auto", dtype="float32").args[0]
    critic = run(pack, "NPEditLoadCritic", family="z_image", model=names["zimage"], text_encoder="none", vae="none",
                 tokenizer="auto", dtype="float32", fake_weights=names["zimage_fake"]).args[0]
    return editor, judge, critic


@pytest.fixture(scope="module")
def image(photos):
    """A real photo at an odd size, as a ComfyUI IMAGE (1, 45, 67, 3); the editor runs it at 48x64."""
    return photos("chelsea")[:, :, :270:6, :402:6].movedim(1, -1).contiguous()


def test_loaders_build_the_right_models(pack, models, models_dir):
    editor, judge, critic = models
    for model in (editor, judge, critic):  # the pack's own core, as inside ComfyUI (no top-level npedit_core there)
        assert type(model).__module__.startswith(fake_comfy.PACK + ".npedit_core."), type(model).__module__
    assert editor.family == "z_image" and any(".editor." in n for n, _ in editor.transformer.named_parameters())
    assert type(judge).__name__ == "Qwen25VLJudge"
    assert type(critic).__name__ == "Critic"
    _, names = models_dir
    flux = load_editor(pack, names, family="flux2_klein", model=names["model"], text_encoder=names["text_encoder"],
                       vae=names["vae"], tokenizer=names["tokenizer"], weights=names["flux2_editor"])
    assert flux.family == "flux2_klein"


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(weights="zimage-fake.safetensors"), "holds the 'fake' weights, not the 'editor'"),
        (dict(weights="flux2-editor.safetensors"), "trained on 'flux2_klein', not 'z_image'"),
        (dict(family="flux2_klein", model="flux2-klein-tiny.safetensors"), "text_encoder and vae: flux2-klein-tiny"),
        (dict(text_encoder="qwen3-tiny.safetensors"), "text_encoder: .* is a diffusers folder"),
        (dict(preview_decoder="missing.pth"), "preview_decoder"),
        (dict(model="gone/"), "model: folder 'gone/' not found"),
    ],
)
def test_loader_errors_name_the_input(pack, models_dir, overrides, match):
    with pytest.raises(pack.npedit_core.errors.NPEditError, match=match):
        load_editor(pack, models_dir[1], **overrides)


def test_sampler_keeps_the_exact_size_layout_and_batch(pack, models, image, state):
    editor = models[0]
    batch = torch.cat([image, image.flip(2)])
    out = run(pack, "NPEditSampler", editor=editor, image=batch, instruction="make the cat blue", seed=5, steps=2).args[0]
    assert out.shape == batch.shape and out.dtype == torch.float32 and out.device.type == "cpu"
    assert 0 <= out.min() and out.max() <= 1
    alone = run(pack, "NPEditSampler", editor=editor, image=image.flip(2), instruction="make the cat blue", seed=6,
                steps=2).args[0]
    assert torch.allclose(out[1:], alone, atol=1e-5)  # item i uses seed + i
    assert [(v, t) for v, t, _ in state.progress] == [(1, 2), (2, 2), (1, 2), (2, 2)]
    assert all(p is None for _, _, p in state.progress)  # ComfyUI's default --preview-method none
    assert state.emptied >= 2  # memory handed back after each run


def test_sampler_previews_when_comfyui_asks_for_them(pack, models, image, state):
    fake_comfy.cli_args.args.preview_method = fake_comfy.LatentPreviewMethod.Auto
    run(pack, "NPEditSampler", editor=models[0], image=image, instruction="make it blue", seed=0, steps=3)
    previews = [p for _, _, p in state.progress]
    assert len(previews) == 3 and all(p[0] == "JPEG" and p[1].size == (64, 48) and p[2] == 512 for p in previews)


def test_flux2_previews_use_the_taef2_decoder(pack, models_dir, image, state):
    _, names = models_dir
    if "taef2" not in names:
        pytest.skip("TAEF2 weights not found in the shared assets")
    flux = load_editor(pack, names, family="flux2_klein", model=names["model"], text_encoder=names["text_encoder"],
                       vae=names["vae"], tokenizer=names["tokenizer"], weights=names["flux2_editor"],
                       preview_decoder=names["taef2"])
    calls = []
    decoder = flux.fast_decoder
    flux.fast_decoder = lambda x: calls.append(tuple(x.shape)) or decoder(x)
    fake_comfy.cli_args.args.preview_method = fake_comfy.LatentPreviewMethod.Auto
    out = run(pack, "NPEditSampler", editor=flux, image=image, instruction="make it blue", seed=0, steps=2).args[0]
    assert out.shape == image.shape
    assert calls == [(1, 128, 3, 4)] * 2  # the x0 estimate of the first item, 48x64 pixels / 16
    assert [p[1].size for _, _, p in state.progress] == [(64, 48)] * 2
    with pytest.raises(pack.npedit_core.errors.NPEditError, match="preview_decoder: TAEF2 decodes FLUX.2"):
        load_editor(pack, names, preview_decoder=names["taef2"])


def test_sampler_mask_keeps_unmasked_pixels_bit_exact(pack, models, image, state):
    mask = torch.zeros(1, 45, 67)
    mask[:, 10:30, 20:50] = 1.0
    out = run(pack, "NPEditSampler", editor=models[0], image=image, instruction="add a hat", seed=0, steps=1,
              mask=mask).args[0]
    assert torch.equal(out[0][mask[0] == 0], image[0][mask[0] == 0])
    with pytest.raises(pack.npedit_core.errors.NPEditError, match="mask: size"):
        run(pack, "NPEditSampler", editor=models[0], image=image, instruction="x", seed=0, steps=1,
            mask=torch.zeros(1, 64, 64))


def test_cancel_stops_the_sampler_between_steps(pack, models, image, state):
    state.interrupt_after = 2
    calls = []
    editor = models[0]
    original = editor.velocity
    editor.velocity = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
        with pytest.raises(InterruptProcessingException):
            run(pack, "NPEditSampler", editor=editor, image=image, instruction="x", seed=0, steps=50)
    finally:
        del editor.velocity
    assert len(calls) == 3 and len(state.progress) == 2  # stopped at the third step's check, not after 50


def test_bad_inputs_name_the_input(pack, models, image):
    errors = pack.npedit_core.errors.NPEditError
    sampler = nodes(pack)["NPEditSampler"]
    assert sampler.validate_inputs(instruction="  ").startswith("instruction: empty")
    assert sampler.validate_inputs(instruction=None) is True  # linked: checked when it runs
    with pytest.raises(errors, match="image: expected 3 colour channels"):
        sampler.execute(editor=models[0], image=torch.rand(1, 8, 8, 4), instruction="x", seed=0, steps=1)
    with pytest.raises(errors, match="reference: 2 images for 3 edited"):
        run(pack, "NPEditVLMScore", judge=models[1], reference=image.repeat(2, 1, 1, 1), edited=image.repeat(3, 1, 1, 1),
            instruction="x", edit_type="color", object="")
    with pytest.raises(errors, match=r"caption\[0\]: empty"):  # checked when it runs: a critic on ComfyUI's MODEL reads none
        run(pack, "NPEditDMDCritic", critic=models[2], image=image, caption=" ", seed=0, guidance=3.5)
    with pytest.raises(errors, match="positive, negative: only for a critic from NP-Edit DMD Critic from MODEL"):
        run(pack, "NPEditDMDCritic", critic=models[2], image=image, caption="a cat", seed=0, guidance=3.5,
            positive=[[torch.zeros(1, 2, 8), {}]])
    # Combo values are checked by the pack: ComfyUI 0.3.75 does not check V3 combos itself.
    loader = nodes(pack)["NPEditLoadEditor"]
    assert loader.validate_inputs(model="gone/", dtype="float32").startswith("model: 'gone/' is not available")
    assert loader.validate_inputs(model="zimage-tiny/", dtype="float8").startswith("dtype: 'float8'")
    assert loader.validate_inputs(model="zimage-tiny/", weights="zimage-editor.safetensors") is True
    assert nodes(pack)["NPEditVLMScore"].validate_inputs("x", "recolor").startswith("edit_type: 'recolor'")


def test_vlm_score_outputs_one_value_per_item_and_a_report(pack, models, image, state):
    out = run(pack, "NPEditVLMScore", judge=models[1], reference=image, edited=torch.cat([image, 1 - image]),
              instruction="remove the cat", edit_type="remove", object="cat")
    p_edit, p_rest, report = out.args
    assert len(p_edit) == len(p_rest) == 2 and all(isinstance(p, float) and 0 < p < 1 for p in p_edit + p_rest)
    assert len(report.splitlines()) == 2 and "(remove) remove the cat" in report
    assert out.ui.as_dict() == {"text": (report,)}
    assert [v for v, _, _ in state.progress] == [1, 2]


def test_select_best_returns_the_argmax_candidate(pack, models, image):
    candidates = torch.cat([image, image.flip(2), 1 - image])
    best, index, score, report = run(pack, "NPEditSelectBest", judge=models[1], reference=image, candidates=candidates,
                                     instruction="make it brighter", edit_type="color", object="").args
    expected = pack.npedit_core.scoring.score_edits(models[1], image.movedim(-1, 1), candidates.movedim(-1, 1),
                                                    "make it brighter", "color")
    assert index == expected.best() and score == pytest.approx(expected.overall[index], abs=1e-6)
    assert torch.equal(best, candidates[index:index + 1]) and report.startswith(f"best: #{index}\n#0  edit done")


def test_dmd_critic_scores_each_item(pack, models, image):
    realism, report = run(pack, "NPEditDMDCritic", critic=models[2], image=torch.cat([image, image]), caption="a cat",
                          seed=0, guidance=3.5).args
    assert len(realism) == 2 and realism[0] == pytest.approx(realism[1]) and realism[0] > 0
    assert report.count("realism") == 2


def test_refine_keeps_the_size_and_reports_the_objective(pack, models, image, state):
    _, judge, critic = models
    out, report = run(pack, "NPEditRefine", critic=critic, reference=image, edited=image.flip(2), instruction="flip it",
                      edit_type="other", object="", caption="a cat", steps=2, lr=0.02, w_vlm=0.02, w_dmd=1.0, seed=0,
                      judge=judge).args
    assert out.shape == image.shape and out.dtype == torch.float32
    assert report.startswith("step 1/2: loss") and "vlm_loss" in report and "dmd_loss" in report
    with pytest.raises(pack.npedit_core.errors.NPEditError, match="judge: w_vlm > 0 needs a judge"):
        run(pack, "NPEditRefine", critic=critic, reference=image, edited=image, instruction="x", edit_type="other",
            object="", caption="a cat", steps=1, lr=0.02, w_vlm=0.5, w_dmd=1.0, seed=0)


def test_sigmas_node_is_the_editor_schedule_ending_at_zero(pack):
    (sigmas,) = run(pack, "NPEditSigmas", steps=4, shift=6.0).args
    assert sigmas.dtype == torch.float32
    assert [round(float(s), 4) for s in sigmas] == [1.0, 0.9474, 0.8571, 0.6667, 0.0]


@pytest.mark.parametrize("step", ["renoise", "ddim"])
def test_step_sampler_is_our_sampler_given_comfyuis_starting_noise(pack, models, step):
    """The SAMPLER's function, fed what ComfyUI feeds it (x = its seeded starting noise, a model returning x0,
    extra_args["seed"]), ends where our `denoise` ends with the NP-Edit Sampler's noise stream."""
    from npedit_core.sampler import SeededNoise, denoise, edit_schedule

    editor, _, _ = models
    ref = torch.randn(1, 16, 6, 4, generator=torch.Generator().manual_seed(3))
    text = editor.encode_text(["make it blue"])
    (sigmas,) = run(pack, "NPEditSigmas", steps=4, shift=6.0).args
    (sampler,) = run(pack, "NPEditStepSampler", step=step, eta=1.0).args
    seed, stream = 11, SeededNoise([11])
    start = torch.randn(ref.shape, generator=torch.Generator().manual_seed(seed))  # comfy.sample.prepare_noise
    with torch.no_grad():
        ours = denoise(editor, stream(ref), edit_schedule(4, 6.0), text, ref, eta=1.0, renoise=stream, step=step)

        def model(x, sigma, **_):  # ComfyUI's denoised for a flow model: x - sigma * v
            return x - sigma.view(-1, 1, 1, 1) * editor.velocity(x, sigma, text, ref)

        seen = []
        theirs = sampler.sampler_function(model, start, sigmas, extra_args={"seed": seed},
                                          callback=lambda d: seen.append(d["i"]), **sampler.extra_options)
    assert seen == [0, 1, 2, 3]
    assert torch.allclose(theirs, ours, atol=1e-5), float((theirs - ours).abs().max())


def test_z_image_reference_refuses_another_model_in_one_line(pack):
    class Patcher:  # what ComfyUI's loaders give, around a FLUX model
        def get_model_object(self, name):
            return torch.nn.Linear(1, 1) if name == "diffusion_model" else None

    with pytest.raises(Exception, match=r"the model is a Linear, not Z-Image; load a Z-Image diffusion model"):
        run(pack, "NPEditZImageReference", model=Patcher(), reference={"samples": torch.zeros(1, 16, 4, 4)})
