"""RQVAEModel as a diffusers model: outputs, save/load, dtypes, gradient checkpointing, bad input."""

import pytest
import torch

from rq_hf import RQVAEModel

TINY = dict(
    down_block_types=["DownEncoderBlock2D", "AttnDownEncoderBlock2D"],
    up_block_types=["AttnUpDecoderBlock2D", "UpDecoderBlock2D"],
    block_out_channels=[32, 32],
    layers_per_block=1,
    latent_channels=8,
    embed_dim=8,
    sample_size=16,
    num_quantizers=3,
    codebook_size=16,
)


@pytest.fixture
def tiny_model():
    return RQVAEModel(**TINY).eval()


def test_shapes_of_every_public_method(tiny_model):
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    encoded = tiny_model.encode(images)
    assert encoded.latents.shape == encoded.quantized.shape == (2, 8, 8, 8)
    assert encoded.codes.shape == (2, 8, 8, 3) and encoded.codes.dtype == torch.int64
    assert tiny_model.code_shape == (8, 8, 3)
    assert tiny_model.decode(encoded.quantized).sample.shape == images.shape
    assert tiny_model.decode_codes(encoded.codes, depth=1).sample.shape == images.shape
    assert tiny_model.codes_to_embeddings(encoded.codes).shape == (2, 8, 8, 3, 8)
    soft, codes = tiny_model.soft_codes(images, temperature=1.0)
    assert soft.shape == (2, 8, 8, 3, 16) and torch.equal(codes, encoded.codes)
    output = tiny_model(images)
    assert output.sample.shape == images.shape and output.commitment_loss.ndim == 0
    sample, codes, loss = tiny_model(images, return_dict=False)
    assert torch.equal(codes, encoded.codes)
    assert len(tiny_model.get_codebook_embeddings()) == 3


def test_decode_of_quantized_latents_equals_decode_of_codes(tiny_model):
    images = torch.rand(1, 3, 16, 16) * 2 - 1
    encoded = tiny_model.encode(images)
    torch.testing.assert_close(
        tiny_model.decode(encoded.quantized).sample, tiny_model.decode_codes(encoded.codes).sample
    )


def test_save_and_load_round_trip_in_safetensors(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    loaded = RQVAEModel.from_pretrained(tmp_path).eval()
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    assert torch.equal(loaded.encode(images).codes, tiny_model.encode(images).codes)
    for key, value in tiny_model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_separate_codebooks_of_different_sizes_round_trip(tmp_path):
    model = RQVAEModel(**{**TINY, "codebook_size": [16, 8, 4], "shared_codebook": False})
    model.save_pretrained(tmp_path)
    loaded = RQVAEModel.from_pretrained(tmp_path)
    assert loaded.codebook_sizes == [16, 8, 4]


def test_loading_in_bf16_keeps_the_codebooks_in_fp32(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    loaded = RQVAEModel.from_pretrained(tmp_path, torch_dtype=torch.bfloat16)
    assert loaded.encoder.conv_in.weight.dtype == torch.bfloat16
    assert loaded.quantizer.codebooks[0].embeddings.dtype == torch.float32
    images = torch.rand(1, 3, 16, 16, dtype=torch.bfloat16)
    assert loaded.decode_codes(loaded.encode(images).codes).sample.dtype == torch.bfloat16


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = RQVAEModel(**TINY).train()
    reference = RQVAEModel(**TINY).train()
    reference.load_state_dict(model.state_dict())
    model.enable_gradient_checkpointing()
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    for m in (model, reference):
        torch.manual_seed(1)
        out = m(images)
        (out.sample.pow(2).mean() + out.commitment_loss).backward()
    torch.testing.assert_close(model.encoder.conv_in.weight.grad, reference.encoder.conv_in.weight.grad)


@pytest.mark.parametrize(
    "call, argument",
    [
        (lambda m: m.encode(torch.rand(1, 1, 16, 16)), "images"),
        (lambda m: m.encode(torch.rand(1, 3, 15, 16)), "images"),
        (lambda m: m.encode(torch.rand(3, 16, 16)), "images"),
        (lambda m: m(torch.rand(1, 3, 16, 13)), "images"),
        (lambda m: m.decode_codes(torch.full((1, 8, 8, 3), 16)), "codes"),
        (lambda m: m.decode_codes(torch.zeros(1, 8, 8, 2, dtype=torch.long)), "codes"),
        (lambda m: m.decode_codes(torch.zeros(1, 8, 8, 3, dtype=torch.long), depth=4), "depth"),
        (lambda m: m.decode_codes(torch.zeros(1, 8, 8, 3, dtype=torch.long), depth=0), "depth"),
        (lambda m: m.decode(torch.rand(1, 5, 8, 8)), "quantized_latents"),
    ],
)
def test_bad_input_is_a_clear_value_error(tiny_model, call, argument):
    with pytest.raises(ValueError, match=f"^{argument}: expected"):
        call(tiny_model)


def test_mismatched_block_lists_are_refused():
    with pytest.raises(ValueError, match="expected one entry per level"):
        RQVAEModel(**{**TINY, "block_out_channels": [32, 32, 32]})


def test_checked_pixels_clamps_finite_images_and_refuses_nan_and_inf():
    from rq_hf.modeling_rqvae import checked_pixels

    assert torch.equal(checked_pixels(torch.tensor([-2.0, 0.5, 3.0])), torch.tensor([-1.0, 0.5, 1.0]))
    for bad in (float("nan"), float("inf")):
        with pytest.raises(FloatingPointError, match="vqvae: the decoder produced NaN or infinite pixels"):
            checked_pixels(torch.tensor([0.0, bad]))
