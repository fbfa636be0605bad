"""Text-to-image pipelines: prompts through the converted caption tokenizer, batching, CLIP re-ranking."""

import json
import tempfile
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoTokenizer,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPProcessor,
    CLIPTokenizerFast,
)

from rq_hf import RQPipeline, RQTransformerConfig, RQTransformerForImageGeneration, RQVAEModel
from rq_hf.clip_reranking import rerank_candidates
from rq_hf.conversion_tokenizer import convert_rq_tokenizer
from rq_hf.evaluation import clip_score

BPE = Path(__file__).parent / "fixtures" / "tokenizer-bpe16k"
CAPTION_LENGTH = 32


@pytest.fixture(scope="module")
def caption_tokenizer(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok") / "tokenizer"
    convert_rq_tokenizer(BPE / "bpe-16k-vocab.json", BPE / "bpe-16k-merges.txt", folder)
    return AutoTokenizer.from_pretrained(folder)


def tiny_text_pipeline(tokenizer, null_condition_id=None) -> RQPipeline:
    torch.manual_seed(0)
    vqvae = RQVAEModel(
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D"] * 2,
        block_out_channels=[32, 32],
        layers_per_block=1,
        latent_channels=8,
        embed_dim=8,
        sample_size=8,
        num_quantizers=2,
        codebook_size=16,
    ).eval()
    config = RQTransformerConfig(
        code_shape=[4, 4, 2],
        vocab_size=16,
        condition_vocab_size=len(tokenizer),
        condition_length=CAPTION_LENGTH,
        hidden_size=32,
        codebook_dim=8,
        num_spatial_layers=1,
        num_depth_layers=1,
        num_spatial_heads=2,
        num_depth_heads=2,
        null_condition_id=null_condition_id,
    )
    transformer = RQTransformerForImageGeneration(config).eval()
    transformer.load_codebooks_from_rqvae(vqvae)
    return RQPipeline(vqvae=vqvae, transformer=transformer, tokenizer=tokenizer)


@pytest.fixture(scope="module")
def text_pipeline(caption_tokenizer):
    return tiny_text_pipeline(caption_tokenizer)


def tiny_clip():
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=100,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=16,
        ),
        vision_config=dict(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=16,
            patch_size=8,
        ),
        projection_dim=8,
    )
    tokenizer = CLIPTokenizerFast.from_pretrained(_write_clip_tokenizer())
    image_processor = CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    return CLIPModel(config).eval(), CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def _write_clip_tokenizer() -> Path:
    """A character-level CLIP BPE vocabulary (no merges): enough to tokenize test captions offline."""
    folder = Path(tempfile.mkdtemp())
    vocab = {
        "<|startoftext|>": 0,
        "<|endoftext|>": 1,
        **{f"{c}</w>": i + 2 for i, c in enumerate("abcdefghijklmnopqrstuvwxyz")},
    }
    vocab.update({c: len(vocab) + i for i, c in enumerate("abcdefghijklmnopqrstuvwxyz")})
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return folder


def test_prompts_are_tokenized_like_the_original_and_batched(text_pipeline, caption_tokenizer):
    prompts = ["a painting of a cat", "Eiffel tower on a desert."]
    ids = text_pipeline.prepare_condition_ids(None, prompts, num_images_per_prompt=2)
    expected = caption_tokenizer(prompts, padding="max_length", truncation=True, max_length=CAPTION_LENGTH)
    assert ids.shape == (4, CAPTION_LENGTH)
    assert ids[::2].tolist() == expected["input_ids"] and torch.equal(ids[0], ids[1])
    images = text_pipeline(prompt=prompts, num_images_per_prompt=2, output_type="pt").images
    assert images.shape == (4, 3, 8, 8)


def test_a_prompt_equals_its_token_ids(text_pipeline, caption_tokenizer):
    prompt = "a photo of a dog"
    ids = torch.tensor(
        caption_tokenizer([prompt], padding="max_length", truncation=True, max_length=32)["input_ids"]
    )
    by_prompt = text_pipeline(
        prompt=prompt, generator=torch.Generator().manual_seed(0), output_type="pt"
    ).images
    by_ids = text_pipeline(
        condition_ids=ids, generator=torch.Generator().manual_seed(0), output_type="pt"
    ).images
    assert torch.equal(by_prompt, by_ids)


def test_rerank_orders_planted_candidates_by_clip_score():
    model, processor = tiny_clip()
    torch.manual_seed(1)
    candidates = torch.rand(6, 3, 16, 16)
    prompts = ["a cat", "a dog"]
    scores = clip_score(candidates, [p for p in prompts for _ in range(3)], model, processor).view(2, 3)
    kept, kept_scores = rerank_candidates(candidates, prompts, 3, 2, model, processor)
    for group in range(2):
        order = scores[group].argsort(descending=True)[:2]
        torch.testing.assert_close(kept[group * 2 : group * 2 + 2], candidates[group * 3 + order])
        torch.testing.assert_close(kept_scores[group * 2 : group * 2 + 2], scores[group, order])
    assert (kept_scores.view(2, 2)[:, 0] >= kept_scores.view(2, 2)[:, 1]).all()


def test_pipeline_reranking_returns_the_best_images_and_their_scores(text_pipeline):
    clip = tiny_clip()
    output = text_pipeline(
        prompt=["a cat", "a dog"],
        num_images_per_prompt=2,
        num_candidates=4,
        rerank_with=clip,
        generator=torch.Generator().manual_seed(0),
        output_type="pt",
    )
    assert output.images.shape == (4, 3, 8, 8) and output.clip_scores.shape == (4,)
    pairs = output.clip_scores.view(2, 2)
    assert (pairs[:, 0] >= pairs[:, 1]).all()


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(prompt=[]), "prompt"),
        (dict(prompt=["ok", 3]), "prompt"),
        (dict(prompt="a cat", class_labels=1), "class_labels, prompt"),
        (dict(class_labels=1), "class_labels"),
        (dict(), "prompt"),
        (dict(prompt="a cat", guidance_scale=3.0), "guidance_scale"),
        (dict(prompt="a cat", num_candidates=4), "num_candidates"),
        (
            dict(prompt="a cat", num_images_per_prompt=4, num_candidates=2, rerank_with=("m", "p")),
            "num_candidates",
        ),
        (dict(class_labels=None, rerank_with=("m", "p")), "rerank_with"),
    ],
)
def test_bad_input_is_a_clear_error(text_pipeline, kwargs, argument):
    with pytest.raises(ValueError, match=f"^{argument}: expected"):
        text_pipeline(**kwargs)


def test_guidance_works_on_a_model_with_a_null_condition(caption_tokenizer):
    pipeline = tiny_text_pipeline(caption_tokenizer, null_condition_id=0)
    images = pipeline(prompt="a cat", guidance_scale=2.0, output_type="pt").images
    assert torch.isfinite(images).all()


def test_guidance_scale_defaults_to_the_generation_config(caption_tokenizer):
    pipeline = tiny_text_pipeline(caption_tokenizer, null_condition_id=0)

    def images(**kwargs):
        generator = torch.Generator().manual_seed(3)
        return pipeline(prompt="a cat", output_type="pt", generator=generator, **kwargs).images

    unguided = images(guidance_scale=1.0)
    assert torch.equal(images(), unguided)
    pipeline.transformer.generation_config.guidance_scale = (
        1e4  # large: a random model barely reads the caption
    )
    assert torch.equal(images(), images(guidance_scale=1e4))
    assert not torch.equal(images(), unguided)


@pytest.mark.slow
def test_cli_generates_from_prompts_with_reranking(text_pipeline, tmp_path):
    import os
    import subprocess
    import sys

    text_pipeline.save_pretrained(tmp_path / "pipe")
    model, processor = tiny_clip()
    model.save_pretrained(tmp_path / "clip")
    processor.save_pretrained(tmp_path / "clip")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "rq_hf.cli",
            "generate",
            "--model",
            str(tmp_path / "pipe"),
            "--prompt",
            "a cat",
            "a dog",
            "--num-images",
            "2",
            "--rerank-with",
            str(tmp_path / "clip"),
            "--num-candidates",
            "3",
            "--device",
            "cpu",
            "--output",
            str(tmp_path / "grid.png"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"},
    )
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "grid.png").is_file()
