"""ResidualQuantizer on hand-made data: search, losses, EMA update and restart, layouts, bad input."""

import math

import pytest
import torch

from rq_hf.quantizer import EMACodebook, ResidualQuantizer


def make_quantizer(**kwargs):
    defaults = dict(dim=2, num_quantizers=2, codebook_size=4, shared_codebook=True)
    defaults.update(kwargs)
    return ResidualQuantizer(**defaults)


def test_residual_search_picks_nearest_code_per_depth_and_sums_embeddings():
    quantizer = make_quantizer().eval()
    quantizer.codebooks[0].embeddings.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.1, 0.0], [0.0, 0.1]]))
    latents = torch.tensor([1.1, 0.9]).view(1, 2, 1, 1)  # r0=(1.1,0.9): code 0 -> r1=(0.1,0.9): code 1
    quantized, codes, loss = quantizer(latents)
    assert codes.tolist() == [[[[0, 1]]]]
    torch.testing.assert_close(quantized.flatten(), torch.tensor([1.0, 1.0]))
    expected_loss = ((torch.tensor([0.1, 0.9]) ** 2).mean() + (torch.tensor([0.1, -0.1]) ** 2).mean()) / 2
    torch.testing.assert_close(loss, expected_loss)


def test_straight_through_passes_gradients_to_latents():
    quantizer = make_quantizer().eval()
    latents = torch.randn(2, 2, 3, 3, requires_grad=True)
    quantized, _, _ = quantizer(latents)
    quantized.sum().backward()
    torch.testing.assert_close(latents.grad, torch.ones_like(latents))


def test_ema_update_matches_the_formula_on_hand_made_data():
    codebook = EMACodebook(num_codes=3, dim=2, decay=0.9, eps=1e-5, restart_unused_codes=False)
    codebook.cluster_size_ema.copy_(torch.tensor([2.0, 5.0, 0.5]))
    codebook.embed_ema.copy_(torch.tensor([[2.0, 0.0], [0.0, 5.0], [1.0, 1.0]]))
    vectors = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]])
    codes = torch.tensor([0, 0, 1])
    codebook.ema_update(vectors, codes)

    counts = torch.tensor([2.0, 1.0, 0.0])
    sums = torch.tensor([[4.0, 0.0], [0.0, 2.0], [0.0, 0.0]])
    size_ema = 0.9 * torch.tensor([2.0, 5.0, 0.5]) + 0.1 * counts
    embed_ema = 0.9 * torch.tensor([[2.0, 0.0], [0.0, 5.0], [1.0, 1.0]]) + 0.1 * sums
    total = size_ema.sum()
    normalized = total * (size_ema + 1e-5) / (total + 3 * 1e-5)
    torch.testing.assert_close(codebook.cluster_size_ema, size_ema)
    torch.testing.assert_close(codebook.embed_ema, embed_ema)
    torch.testing.assert_close(codebook.embeddings, embed_ema / normalized[:, None])


def test_restart_replaces_dead_codes_with_batch_vectors_and_resets_their_count():
    codebook = EMACodebook(num_codes=4, dim=3, decay=0.5, restart_unused_codes=True)
    codebook.cluster_size_ema.copy_(torch.tensor([10.0, 10.0, 0.1, 0.0]))
    live_before = codebook.embed_ema[:2].clone()
    vectors = torch.tensor([[5.0, 5.0, 5.0], [7.0, 7.0, 7.0]])  # fewer vectors than codes: tiled with noise
    codebook.ema_update(vectors, torch.tensor([0, 1]))

    assert codebook.cluster_size_ema[2:].tolist() == [1.0, 1.0]
    torch.testing.assert_close(codebook.embed_ema[:2], 0.5 * live_before + 0.5 * vectors)
    noise_bound = 0.01 / math.sqrt(3)
    for row in codebook.embed_ema[2:]:
        offset = row[None] - vectors
        assert ((offset >= 0) & (offset <= noise_bound)).all(dim=1).any()
    # a restarted code with count 1 is its own vector after normalisation, up to the eps smoothing
    torch.testing.assert_close(codebook.embeddings[2:], codebook.embed_ema[2:], rtol=1e-3, atol=1e-3)
    assert torch.isfinite(codebook.embeddings).all()


def test_training_step_quantizes_with_the_codebook_before_its_update():
    quantizer = make_quantizer(num_quantizers=1, restart_unused_codes=False)
    before = quantizer.codebooks[0].embeddings.clone()
    latents = torch.randn(2, 2, 4, 4)
    quantized, codes, _ = quantizer.train()(latents)
    assert not torch.equal(quantizer.codebooks[0].embeddings, before)
    expected = before[codes[..., 0]].permute(0, 3, 1, 2)
    torch.testing.assert_close(quantized, expected)


def test_eval_mode_leaves_codebooks_untouched():
    quantizer = make_quantizer().eval()
    state = {k: v.clone() for k, v in quantizer.state_dict().items()}
    quantizer(torch.randn(2, 2, 4, 4))
    assert all(torch.equal(state[k], v) for k, v in quantizer.state_dict().items())


def test_separate_codebooks_of_different_sizes():
    quantizer = make_quantizer(num_quantizers=3, codebook_size=[8, 4, 2], shared_codebook=False).eval()
    assert [c.num_codes for c in quantizer.codebooks] == [8, 4, 2]
    _, codes, _ = quantizer(torch.randn(3, 2, 4, 4))
    assert (codes.amax(dim=(0, 1, 2)) < torch.tensor([8, 4, 2])).all()
    soft, soft_codes = quantizer.soft_codes(torch.randn(3, 2, 4, 4), temperature=0.5)
    assert soft.shape == (3, 4, 4, 3, 8)
    torch.testing.assert_close(soft.sum(-1), torch.ones(3, 4, 4, 3))
    assert soft[..., 2, 2:].abs().max() == 0 and soft[..., 1, 4:].abs().max() == 0


def test_coarse_code_map_round_trips_layout():
    quantizer = make_quantizer(dim=3, patch_size=(2, 2))
    latents = torch.randn(2, 3, 4, 6)
    vectors = quantizer.to_code_vectors(latents)
    assert vectors.shape == (2, 2, 3, 12)
    torch.testing.assert_close(vectors[0, 0, 0], latents[0, :, :2, :2].permute(1, 2, 0).reshape(-1))
    torch.testing.assert_close(quantizer.to_latents(vectors), latents)
    _, codes, _ = quantizer.eval()(latents)
    assert codes.shape == (2, 2, 3, 2)
    assert quantizer.decode_codes(codes).shape == latents.shape


def test_codes_to_embeddings_cumulative_and_partial_depth_decode():
    quantizer = make_quantizer(num_quantizers=3).eval()
    codes = torch.randint(0, 4, (2, 3, 3, 3))
    per_depth = quantizer.codes_to_embeddings(codes)
    cumulative = quantizer.codes_to_embeddings(codes, cumulative=True)
    torch.testing.assert_close(cumulative[..., 2, :], per_depth.sum(dim=-2))
    torch.testing.assert_close(
        quantizer.decode_codes(codes, depth=2), per_depth[..., :2, :].sum(-2).permute(0, 3, 1, 2)
    )


def test_stochastic_soft_codes_follow_the_generator():
    quantizer = make_quantizer().eval()
    latents = torch.randn(2, 2, 4, 4)
    first = quantizer.soft_codes(latents, 2.0, stochastic=True, generator=torch.Generator().manual_seed(3))
    second = quantizer.soft_codes(latents, 2.0, stochastic=True, generator=torch.Generator().manual_seed(3))
    assert torch.equal(first[1], second[1])
    deterministic = quantizer.soft_codes(latents, 2.0)[1]
    assert deterministic.shape == first[1].shape


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda q: q(torch.randn(1, 3, 4, 4)), "latents"),
        (lambda q: q(torch.randint(0, 2, (1, 2, 4, 4))), "latents"),
        (lambda q: q.decode_codes(torch.full((1, 2, 2, 2), 4)), "codes"),
        (lambda q: q.decode_codes(torch.zeros(1, 2, 2, 3, dtype=torch.long)), "codes"),
        (lambda q: q.decode_codes(torch.zeros(1, 2, 2, 2)), "codes"),
        (lambda q: q.decode_codes(torch.zeros(1, 2, 2, 2, dtype=torch.long), depth=3), "depth"),
        (lambda q: q.decode_codes(torch.zeros(1, 2, 2, 2, dtype=torch.long), depth=0), "depth"),
        (lambda q: q.soft_codes(torch.randn(1, 2, 4, 4), temperature=0.0), "temperature"),
    ],
)
def test_bad_input_is_a_clear_value_error(call, message):
    with pytest.raises(ValueError, match=f"^{message}: expected"):
        call(make_quantizer().eval())


def test_bad_construction_arguments():
    with pytest.raises(ValueError, match="codebook_size"):
        ResidualQuantizer(dim=2, num_quantizers=2, codebook_size=[4, 8], shared_codebook=True)
    with pytest.raises(ValueError, match="codebook_size"):
        ResidualQuantizer(dim=2, num_quantizers=3, codebook_size=[4, 8], shared_codebook=False)
    with pytest.raises(ValueError, match="num_quantizers"):
        ResidualQuantizer(dim=2, num_quantizers=0, codebook_size=4)
