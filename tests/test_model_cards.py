"""Hub model cards: metadata that parses back, generated cards in step with their generator, other models."""

import importlib.util
import re
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from rq_hf.model_card import DEFAULT_LICENSE, RELEASE_LICENSE, make_model_card
from rq_hf.releases import PIPELINE_TAGS, RELEASES, Metric, SamplingDefaults, get_release

CARDS_DIR = Path(__file__).parents[1] / "model_cards"
HUB_TASKS = {"unconditional-image-generation", "text-to-image"}


def _python_block(card: ModelCard) -> str:
    return re.search(r"```python\n(.*?)```", card.text, re.DOTALL).group(1)


def _generator():
    """model_cards/generate_cards.py as a module (in-process: a subprocess would import rq_hf again)."""
    spec = importlib.util.spec_from_file_location("generate_cards", CARDS_DIR / "generate_cards.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", list(RELEASES))
def test_release_card_metadata_parses_back(name):
    release = get_release(name)
    card = ModelCard(str(make_model_card(name)))  # parse the rendered text again, YAML included
    data = card.data
    assert data.license == RELEASE_LICENSE == "cc-by-nc-sa-4.0"
    assert data.library_name == "rq_hf"
    assert data.pipeline_tag == release.pipeline_tag in HUB_TASKS
    assert data.datasets == (list(release.datasets) or None)
    assert data.model_name == f"rq-{name}"
    assert "arxiv:2203.01941" in data.tags
    results = data.eval_results
    expected = [(m.metric_type, m.value) for m in release.metrics]
    assert [(r.metric_type, r.metric_value) for r in results] == expected
    for result in results:
        assert result.verified is False
        assert result.task_type == release.pipeline_tag
        assert result.source_url in (
            "https://arxiv.org/abs/2203.01941",
            "https://github.com/kakaobrain/rq-vae-transformer",
        )
    assert release.title in card.text and "@inproceedings{lee2022autoregressive" in card.text


@pytest.mark.parametrize("name", list(RELEASES))
def test_usage_snippet_uses_the_pipeline_api(name):
    conditioning = get_release(name).conditioning
    snippet = _python_block(make_model_card(name))
    compile(snippet, f"{name} usage snippet", "exec")
    assert "import rq_hf" in snippet and f'RQPipeline.from_pretrained("rq-{name}")' in snippet
    call = {
        "class": "class_labels=[207, 360]",
        "text": 'prompt="a painting of a cat"',
        "unconditional": "num_images_per_prompt=4",
    }[conditioning]
    assert f"pipe({call}, generator=torch.Generator().manual_seed(0)).images" in snippet


def test_class_conditional_card_states_its_hub_task():
    card = make_model_card("imagenet-821m")
    assert card.data.pipeline_tag == PIPELINE_TAGS["class"] == "unconditional-image-generation"
    assert "class-conditional-image-generation" in card.data.tags
    assert "The Hub has no class-conditional image-generation task" in card.text
    assert "Hub task" not in make_model_card("ffhq").text


def test_sampling_defaults_and_license_terms_are_in_the_card():
    card = make_model_card("cc3m-cc12m-yfcc-3.9b")
    assert "| 1024 | 0.95 | 1.0 |" in card.text
    assert "strictly prohibited" in card.text and card.data.language == ["en"]


def test_repo_id_replaces_the_local_folder_and_the_conversion_step():
    card = make_model_card("imagenet-3.8b", repo_id="someone/rq-imagenet-3.8b")
    assert 'RQPipeline.from_pretrained("someone/rq-imagenet-3.8b")' in card.text
    assert "rq-hf convert" not in card.text
    convert = "rq-hf convert --checkpoint_dir ORIGINAL_DIR --output_dir rq-ffhq --release ffhq"
    assert convert in make_model_card("ffhq").text


def test_generated_cards_match_the_generator(tmp_path):
    _generator().main(["--output_dir", str(tmp_path)])
    generated = sorted(path.name for path in tmp_path.iterdir())
    assert generated == sorted(f"{name}.md" for name in RELEASES)
    committed = sorted(path.name for path in CARDS_DIR.glob("*.md") if path.name != "README.md")
    assert committed == generated, "model_cards/ is stale: run python model_cards/generate_cards.py"
    for name in generated:
        fresh = (tmp_path / name).read_text(encoding="utf-8")
        assert (CARDS_DIR / name).read_text(encoding="utf-8") == fresh, (
            f"model_cards/{name} is stale: run python model_cards/generate_cards.py"
        )


def test_generator_namespace_points_snippets_at_the_hub(tmp_path):
    _generator().write_cards(tmp_path, namespace="someone")
    text = (tmp_path / "lsun-cat.md").read_text(encoding="utf-8")
    assert 'RQPipeline.from_pretrained("someone/rq-lsun-cat")' in text and "rq-hf convert" not in text


def test_unknown_release_name_lists_the_valid_names():
    valid = "ffhq, .*, cc3m-cc12m-yfcc-3.9b"
    with pytest.raises(ValueError, match=f"release: expected one of {valid}, got 'imagenet'"):
        get_release("imagenet")
    with pytest.raises(ValueError, match="imagenet-1.4b-rqvae-50e"):
        make_model_card("imagenet-2b")


def test_card_for_a_model_trained_with_rq_hf():
    fid = Metric("FID", "fid", 12.5, "MNIST 32x32", "ylecun/mnist", "test", "10K samples")
    card = ModelCard(
        str(
            make_model_card(
                None,
                repo_id="someone/rq-mnist",
                conditioning="class",
                datasets=["ylecun/mnist"],
                dataset_description="MNIST digits at 32x32",
                sampling=SamplingDefaults(top_k=None, top_p=0.9),
                model_config_summary={"Code map (h x w x D)": "4x4x4", "Transformer width E": 128},
                extra_metrics=[fid],
            )
        )
    )
    data = card.data
    assert (data.license, data.library_name, data.pipeline_tag) == (
        DEFAULT_LICENSE,
        "rq_hf",
        "unconditional-image-generation",
    )
    assert data.datasets == ["ylecun/mnist"] and data.model_name == "rq-mnist"
    (result,) = data.eval_results
    assert (result.metric_type, result.metric_value, result.verified) == ("fid", 12.5, False)
    assert result.source_url is None
    assert "| Transformer width E | 128 |" in card.text and "| off | 0.9 | 1.0 |" in card.text
    assert "images = pipe(class_labels=[0, 1]" in card.text and "ORIGINAL_DIR" not in card.text
    assert "CC-BY-NC-SA" not in card.text


def test_trained_model_card_license_and_unconditional_minimum():
    card = make_model_card(None, conditioning="text", license="mit")
    assert (card.data.license, card.data.pipeline_tag) == ("mit", "text-to-image")
    assert card.data.eval_results is None
    compile(_python_block(card), "snippet", "exec")


def test_release_extras_add_rows_and_measured_metrics():
    measured = Metric("FID", "fid", 11.9, "ImageNet 256x256", "ILSVRC/imagenet-1k", "train", "50K samples")
    card = make_model_card(
        "imagenet-1.4b",
        model_config_summary={"Transformer width E": "1536 (checked)"},
        extra_metrics=[measured],
    )
    assert "| Transformer width E | 1536 (checked) |" in card.text
    assert [r.metric_value for r in card.data.eval_results] == [11.56, 11.9]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"release": "ffhq", "license": "mit"}, ValueError, "license: expected None for the original"),
        ({"release": "ffhq", "conditioning": "class"}, ValueError, "conditioning: expected None"),
        ({"release": None}, ValueError, "conditioning: expected one of unconditional, class, text"),
        ({"release": None, "conditioning": "audio"}, ValueError, "got 'audio'"),
        ({"release": "ffhq", "extra_metrics": [{"FID": 3.0}]}, TypeError, "extra_metrics: expected"),
    ],
)
def test_bad_arguments_are_refused(kwargs, error, message):
    release = kwargs.pop("release")
    with pytest.raises(error, match=message):
        make_model_card(release, **kwargs)
