"""training/train_rqtransformer.py: two CPU processes, exact resumption, soft labels, cached codes, captions,
pipeline folders that load, and flags or model pairs refused before the first training step."""

from __future__ import annotations

import json

import pytest
import torch
from training_helpers import (
    FIXTURES,
    MNIST,
    TINY_RQVAE,
    TINY_TRANSFORMER,
    UsageError,
    argv_of,
    assert_same_weights,
    launch,
    load_dump,
    train_rqtransformer,
)

from rq_hf import RQPipeline, RQTransformerConfig, RQTransformerForImageGeneration, RQVAEModel


@pytest.fixture(scope="module")
def vqvae_dir(tmp_path_factory):
    """A tiny RQ-VAE (random weights) saved as a model folder: 16x16 images -> 8x8x2 codes, K=32."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("vqvae")
    RQVAEModel.from_config(RQVAEModel.load_config(str(TINY_RQVAE))).save_pretrained(path)
    return path


def flags(vqvae_dir, output_dir, **changes) -> list[str]:
    """Class-conditional training of the tiny transformer on the MNIST fixture (6 steps of 8 digits);
    `changes` maps flag names without dashes to values (True: switch, None: left out)."""
    base = {
        "vqvae": vqvae_dir,
        "model_config": TINY_TRANSFORMER,
        "label_column": "label",
        "train_data_files": MNIST,
        "report_to": "none",
        "train_batch_size": 8,
        "max_train_steps": 6,
        "checkpointing_steps": 3,
        "validation_steps": 6,
        "num_validation_images": 1,
        "learning_rate": 1e-3,
        "output_dir": output_dir,
    }
    return argv_of({f"--{name}": value for name, value in {**base, **changes}.items()})


def train(vqvae_dir, output_dir, **changes) -> RQPipeline:
    return train_rqtransformer.main(train_rqtransformer.parse_args(flags(vqvae_dir, output_dir, **changes)))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_processes_train_identical_weights_and_write_a_loadable_pipeline(vqvae_dir, tmp_path):
    output = tmp_path / "out"
    argv = flags(
        vqvae_dir,
        output,
        condition_dropout=0.2,
        soft_label_temperature=0.5,
        stochastic_codes=True,
        use_ema=True,
        ema_decay=0.9,
    )
    launch("train_rqtransformer", argv, tmp_path / "ranks")
    rank0, rank1 = load_dump(tmp_path / "ranks", 0), load_dump(tmp_path / "ranks", 1)
    assert_same_weights(rank0, rank1)

    pipeline = RQPipeline.from_pretrained(str(output))
    assert_same_weights(rank0, pipeline.transformer.state_dict())
    assert pipeline.transformer.config.null_condition_id == 10
    assert pipeline.transformer.config.condition_vocab_size == 11
    images = pipeline(
        class_labels=[3, 7], guidance_scale=2.0, generator=torch.Generator().manual_seed(0), output_type="np"
    ).images
    assert images.shape == (2, 16, 16, 3)
    card = (output / "README.md").read_text()
    assert "class_labels" in card and "accelerate launch training/train_rqtransformer.py" in card
    assert (output / "validation" / "samples-6.png").is_file()


def test_stopped_and_resumed_run_gives_the_weights_of_an_uninterrupted_run(vqvae_dir, tmp_path):
    # Everything random at once: condition dropout, stochastic codes, dropout, EMA, cached latents.
    # 3 batches per epoch: the run is stopped inside epoch 1 and resumed there.
    options = dict(
        max_train_samples=24,
        condition_dropout=0.3,
        soft_label_temperature=0.5,
        stochastic_codes=True,
        use_ema=True,
        ema_decay=0.9,
        cache_codes=True,
        lr_scheduler="constant",
        checkpointing_steps=2,
    )
    uninterrupted = train(vqvae_dir, tmp_path / "uninterrupted", **options)
    train(vqvae_dir, tmp_path / "resumed", **{**options, "max_train_steps": 4})
    resumed = train(vqvae_dir, tmp_path / "resumed", resume_from_checkpoint="latest", **options)
    assert_same_weights(uninterrupted.transformer.state_dict(), resumed.transformer.state_dict())
    saved = RQPipeline.from_pretrained(str(tmp_path / "resumed"))
    assert_same_weights(uninterrupted.transformer.state_dict(), saved.transformer.state_dict())


def test_cached_codes_train_exactly_like_codes_computed_on_the_fly(vqvae_dir, tmp_path):
    on_the_fly = train(vqvae_dir, tmp_path / "fly", max_train_steps=3, center_crop=True)
    cached = train(vqvae_dir, tmp_path / "cached", max_train_steps=3, cache_codes=True)
    assert_same_weights(on_the_fly.transformer.state_dict(), cached.transformer.state_dict())


def test_soft_label_loss_tends_to_the_hard_label_loss_as_the_temperature_goes_to_zero(vqvae_dir):
    vqvae = RQVAEModel.from_pretrained(str(vqvae_dir)).eval()
    config = RQTransformerConfig(
        code_shape=vqvae.code_shape,
        vocab_size=vqvae.codebook_sizes,
        codebook_dim=vqvae.quantizer.code_dim,
        condition_vocab_size=10,
        hidden_size=32,
        num_spatial_layers=1,
        num_depth_layers=1,
        num_spatial_heads=2,
        num_depth_heads=2,
    )
    transformer = RQTransformerForImageGeneration(config).eval()
    transformer.load_codebooks_from_rqvae(vqvae)
    batch = {"pixel_values": torch.rand(4, 3, 16, 16) * 2 - 1}
    labels = torch.tensor([[1], [2], [3], [4]])

    codes, soft = train_rqtransformer.code_targets(vqvae, batch, temperature=0, stochastic=False)
    assert soft is None
    hard_loss, _ = train_rqtransformer.training_loss(transformer, codes, labels, None)
    gaps = []
    for temperature in (1.0, 0.1, 1e-3, 1e-6):
        soft_codes, soft = train_rqtransformer.code_targets(vqvae, batch, temperature, stochastic=False)
        assert torch.equal(soft_codes, codes)
        soft_loss, _ = train_rqtransformer.training_loss(transformer, soft_codes, labels, soft)
        gaps.append(abs((soft_loss - hard_loss).item()))
    assert gaps == sorted(gaps, reverse=True) and gaps[0] > 1e-3, gaps
    assert gaps[-1] < 1e-5, gaps


def test_caption_conditioning_trains_with_the_text_loss_and_saves_the_tokenizer(vqvae_dir, tmp_path):
    import datasets

    from rq_hf.conversion_tokenizer import convert_rq_tokenizer

    tokenizer = convert_rq_tokenizer(
        FIXTURES / "tokenizer-bpe16k" / "bpe-16k-vocab.json",
        FIXTURES / "tokenizer-bpe16k" / "bpe-16k-merges.txt",
        tmp_path / "tokenizer",
    )
    digits = datasets.load_dataset("parquet", data_files=str(MNIST), split="train").select(range(32))
    names = digits.features["label"].names
    captions = digits.map(lambda row: {"text": f"a handwritten digit {names[row['label']]}"})
    captions.to_parquet(str(tmp_path / "captions.parquet"))
    pipeline = train(
        vqvae_dir,
        tmp_path / "out",
        label_column=None,
        caption_column="text",
        tokenizer=tokenizer,
        train_data_files=tmp_path / "captions.parquet",
        max_train_steps=2,
        condition_dropout=0.1,
        validation_steps=2,
    )
    config = pipeline.transformer.config
    assert (config.condition_length, config.condition_vocab_size, config.null_condition_id) == (
        32,
        16385,
        16384,
    )
    loaded = RQPipeline.from_pretrained(str(tmp_path / "out"))
    assert loaded.tokenizer is not None
    images = loaded(
        prompt="a handwritten digit 3", generator=torch.Generator().manual_seed(0), output_type="pt"
    )
    assert images.images.shape == (1, 3, 16, 16)


def test_fine_tuning_from_a_pipeline_folder_continues_its_transformer(vqvae_dir, tmp_path):
    first = train(vqvae_dir, tmp_path / "first", max_train_steps=2)
    # --vqvae and --pretrained_model both read the pipeline folder (its vqvae/ and transformer/).
    second = train(
        tmp_path / "first",
        tmp_path / "second",
        model_config=None,
        pretrained_model=tmp_path / "first",
        max_train_steps=1,
        learning_rate=1e-9,
    )
    for name, value in first.transformer.state_dict().items():
        torch.testing.assert_close(second.transformer.state_dict()[name], value, atol=1e-6, rtol=0)


BAD_FLAGS = {
    "missing label column": ({"label_column": "digit"}, "--label_column: expected a column of the dataset"),
    "stochastic codes without soft labels": (
        {"stochastic_codes": True},
        "--stochastic_codes: expected a --soft",
    ),
    "guidance for an unconditional model": (
        {"label_column": None, "condition_dropout": 0.1},
        "--condition_dropout: expected 0 for an unconditional model",
    ),
    "caption without tokenizer": (
        {"label_column": None, "caption_column": "label"},
        "--tokenizer: expected a tokenizer folder exactly when",
    ),
    "cached codes of flipped images": ({"cache_codes": True, "random_flip": True}, "--cache_codes: expected"),
    "resolution vs downsampling": ({"resolution": 17}, "--resolution: expected a multiple of the RQ-VAE's"),
    "missing vqvae": ({"vqvae": "/no/such/vqvae"}, "--vqvae: expected an existing folder or a Hub repo id"),
}


@pytest.mark.parametrize("case", list(BAD_FLAGS))
def test_bad_flags_fail_before_training_with_one_clear_message(case, vqvae_dir, tmp_path):
    changes, message = BAD_FLAGS[case]
    with pytest.raises(UsageError) as error:
        train(vqvae_dir, tmp_path / "out", **changes)
    assert str(error.value).startswith(message), str(error.value)
    assert not (tmp_path / "out").exists(), "a refused run must leave nothing behind"


def test_a_model_config_for_another_code_shape_is_refused(vqvae_dir, tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({**json.loads(TINY_TRANSFORMER.read_text()), "code_shape": [4, 4, 2]}))
    with pytest.raises(UsageError) as error:
        train(vqvae_dir, tmp_path / "out", model_config=config)
    assert str(error.value) == (
        "--model_config: expected a transformer agreeing with --vqvae and the conditioning flags "
        "({'code_shape': [8, 8, 2]}), got {'code_shape': [4, 4, 2]}"
    )


def test_a_transformer_trained_for_another_rqvae_is_refused(vqvae_dir, tmp_path):
    train(vqvae_dir, tmp_path / "first", max_train_steps=1)
    torch.manual_seed(1)
    other = tmp_path / "other_vqvae"
    RQVAEModel.from_config(RQVAEModel.load_config(str(TINY_RQVAE))).save_pretrained(other)
    with pytest.raises(UsageError) as error:
        train(other, tmp_path / "second", model_config=None, pretrained_model=tmp_path / "first")
    assert str(error.value).startswith("--vqvae: expected the RQ-VAE the transformer was trained with"), (
        error.value
    )
    assert "codebook copy" in str(error.value)
