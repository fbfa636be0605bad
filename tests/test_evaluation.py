"""rq_hf.evaluation: FID / rFID, Inception Score, statistics files, reconstruction metrics, CLIP score,
figures and the `evaluate` modules. Offline: tiny feature extractors, a randomly initialised CLIP."""

import importlib.util
import json
import os
import socket

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import linalg
from torch import nn

from rq_hf.evaluation import (
    EVALUATE_MODULES,
    FeatureStatistics,
    FeatureStatisticsMetric,
    clip_score,
    codebook_perplexity,
    codebook_usage,
    compute_clip_score,
    compute_fid,
    compute_inception_score,
    compute_statistics,
    evaluate_module_path,
    extract_features,
    fid_from_features,
    frechet_distance,
    inception_score,
    load_inception,
    load_statistics,
    lpips,
    plot_codebook_usage,
    plot_sampling_speed,
    psnr,
    reconstruction_metrics,
    save_statistics,
    ssim,
    statistics_from_features,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class TinyFeatures(nn.Module):
    """Images (B, 3, H, W), uint8 or float in [0, 1] -> (B, 8): 4 x 4 average pool, fixed projection, tanh."""

    def __init__(self):
        super().__init__()
        generator = torch.Generator().manual_seed(1)
        self.register_buffer("projection", torch.randn(48, 8, generator=generator) / 4)

    def forward(self, images):
        images = images.float() / 255 if images.dtype == torch.uint8 else images.float()
        return torch.tanh(F.adaptive_avg_pool2d(images, 4).flatten(1) @ self.projection)


class TinyClassifier(nn.Module):
    """Constant images of value k / (C - 1) -> confident logits (B, C) for class k."""

    def __init__(self, num_classes):
        super().__init__()
        self.num_classes = num_classes

    def forward(self, images):
        classes = (images.float().mean(dim=(1, 2, 3)) * (self.num_classes - 1)).round().long()
        return 50.0 * F.one_hot(classes, self.num_classes).float()


def reference_fid(features_a, features_b):
    """pytorch-fid's computation (the original release's): np.cov and scipy.linalg.sqrtm of the product."""
    a, b = features_a.double().numpy(), features_b.double().numpy()
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    sigma_a, sigma_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(sigma_a @ sigma_b).real
    return ((mu_a - mu_b) ** 2).sum() + np.trace(sigma_a) + np.trace(sigma_b) - 2 * np.trace(covmean)


@pytest.fixture
def images():
    return torch.rand(40, 3, 16, 16)


# ---- FID


def test_fid_of_a_set_against_itself_is_zero(images):
    extractor = TinyFeatures()
    assert abs(compute_fid(images, images, feature_extractor=extractor, batch_size=7)) < 1e-9
    features = extract_features(images, extractor)
    assert abs(fid_from_features(features, features)) < 1e-9


def test_fid_against_a_shifted_set_equals_scipy_sqrtm_reference(images):
    extractor = TinyFeatures()
    shifted = (images * 0.7 + 0.2).clamp(0, 1)
    expected = reference_fid(extractor(shifted), extractor(images))
    assert expected > 1e-3
    assert compute_fid(shifted, images, feature_extractor=extractor) == pytest.approx(expected, rel=1e-6)
    features_a, features_b = torch.randn(300, 16) * 2 + 1, torch.randn(200, 16) * 0.5
    assert fid_from_features(features_a, features_b) == pytest.approx(
        reference_fid(features_a, features_b), rel=1e-8
    )


def test_fid_with_fewer_samples_than_features_is_finite_and_matches_scipy():
    features_a, features_b = torch.randn(6, 16), torch.randn(9, 16) + 0.5
    assert fid_from_features(features_a, features_b) == pytest.approx(
        reference_fid(features_a, features_b), rel=1e-4
    )


def test_fid_accepts_batches_from_an_iterable_and_uint8(images):
    extractor = TinyFeatures()
    as_uint8 = images.mul(255).round().to(torch.uint8)
    from_tensor = compute_fid(as_uint8, images.flip(0) * 0.5, feature_extractor=extractor)
    from_batches = compute_fid(iter(as_uint8.split(9)), images.flip(0) * 0.5, feature_extractor=extractor)
    assert from_batches == pytest.approx(from_tensor, rel=1e-9)


def test_statistics_metric_accumulates_batches_like_numpy_cov():
    features = torch.randn(50, 5) * 3 + 2
    metric = FeatureStatisticsMetric(5)
    for chunk in features.split(13):
        metric.update(chunk)
    statistics = metric.compute()
    assert statistics.num_samples == 50
    np.testing.assert_allclose(statistics.mu, features.double().mean(0).numpy(), rtol=1e-12)
    np.testing.assert_allclose(statistics.sigma, np.cov(features.double().numpy(), rowvar=False), rtol=1e-10)


# ---- IS


def test_inception_score_of_constant_predictions_is_one():
    probabilities = torch.tensor([[0.2, 0.5, 0.3]]).repeat(30, 1)
    mean, std = inception_score(probabilities, splits=10)
    assert mean == pytest.approx(1.0, abs=1e-12) and std == pytest.approx(0.0, abs=1e-12)


def test_inception_score_of_uniform_one_hot_predictions_is_the_class_count():
    probabilities = F.one_hot(torch.arange(7).repeat(10), 7).double()  # every contiguous split holds all 7
    mean, std = inception_score(probabilities, splits=10)
    assert mean == pytest.approx(7.0, rel=1e-12) and std == pytest.approx(0.0, abs=1e-12)


def test_compute_inception_score_runs_a_classifier_on_images():
    values = torch.arange(5).repeat(4).float() / 4  # classes 0..4 cycling, 20 images
    images = values[:, None, None, None].expand(20, 3, 8, 8).contiguous()
    mean, _ = compute_inception_score(images, classifier=TinyClassifier(5), splits=4, batch_size=6)
    assert mean == pytest.approx(5.0, rel=1e-9)


# ---- .npz


def test_statistics_npz_round_trip_in_the_original_layout(tmp_path):
    features = torch.randn(20, 6)
    statistics = statistics_from_features(features)
    original = tmp_path / "imagenet_256_train.npz"
    np.savez(original, mu=statistics.mu, sigma=statistics.sigma)  # how the original release wrote them
    loaded = load_statistics(original)
    assert loaded.num_samples is None
    np.testing.assert_array_equal(loaded.sigma, statistics.sigma)

    ours = tmp_path / "ours.npz"
    save_statistics(statistics, ours)
    assert sorted(os.listdir(tmp_path)) == ["imagenet_256_train.npz", "ours.npz"]  # no temporary left
    archive = np.load(ours)  # the original's loader: np.load(path)["mu"], ["sigma"]
    assert archive["mu"].dtype == np.float64 and archive["sigma"].shape == (6, 6)
    np.testing.assert_array_equal(archive["mu"], statistics.mu)
    assert load_statistics(ours).num_samples == 20


def test_fid_against_a_statistics_file_equals_fid_against_the_images(tmp_path, images):
    extractor = TinyFeatures()
    path = tmp_path / "reference.npz"
    save_statistics(compute_statistics(images, extractor), path)
    generated = images.flip(0) ** 2
    assert compute_fid(generated, path, feature_extractor=extractor) == pytest.approx(
        compute_fid(generated, images, feature_extractor=extractor), rel=1e-9
    )


# ---- reconstruction


def test_codebook_usage_and_perplexity_on_hand_made_codes():
    codes = torch.tensor([[[[0, 0], [0, 1]], [[0, 2], [0, 3]]]])  # (1, 2, 2, 2): depth 0 constant, 1 uniform
    usage = codebook_usage(codes, [3, 5])
    assert [counts.tolist() for counts in usage] == [[4, 0, 0], [1, 1, 1, 1, 0]]
    assert codebook_perplexity(usage) == pytest.approx([1.0, 4.0])
    half = [torch.tensor([2, 2, 0, 0]), torch.tensor([3, 1, 0, 0])]
    expected = np.exp(-(0.75 * np.log(0.75) + 0.25 * np.log(0.25)))
    assert codebook_perplexity(half) == pytest.approx([2.0, expected])


def test_codebook_usage_on_the_golden_rqvae_codes(golden_expected):
    codes = golden_expected("cin")["codes"]  # (3, 8, 8, 4), shared codebook of 64
    usage = codebook_usage(codes, 64)
    assert len(usage) == 4 and all(counts.sum() == 3 * 8 * 8 for counts in usage)
    for counts, perplexity in zip(usage, codebook_perplexity(usage), strict=True):
        assert 1.0 <= perplexity <= int((counts > 0).sum()) + 1e-9


def test_psnr_and_ssim_of_the_golden_rqvae_reconstruction(golden_expected):
    expected = golden_expected("cin")
    originals = (expected["images"] + 1) / 2
    reconstructions = ((expected["reconstruction"] + 1) / 2).clamp(0, 1)
    mse = ((originals - reconstructions) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(
        psnr(originals, reconstructions), 10 * torch.log10(1 / mse), rtol=1e-4, atol=1e-4
    )
    values = ssim(originals, reconstructions)
    assert values.shape == (3,) and bool(((values > -1) & (values < 1)).all())


def test_psnr_and_ssim_on_known_cases():
    originals = torch.full((2, 3, 16, 16), 0.5)
    assert psnr(originals, originals + 0.1).tolist() == pytest.approx([20.0, 20.0], rel=1e-5)
    assert torch.isinf(psnr(originals, originals)).all()
    textured = torch.rand(2, 3, 16, 16)
    assert ssim(textured, textured).tolist() == pytest.approx([1.0, 1.0], abs=1e-6)
    as_uint8 = textured.mul(255).round().to(torch.uint8)
    torch.testing.assert_close(
        ssim(as_uint8, as_uint8.flip(-1)), ssim(as_uint8 / 255, as_uint8.flip(-1) / 255)
    )
    assert (ssim(textured, (textured + 0.3 * torch.rand_like(textured)).clamp(0, 1)) < 0.95).all()


def test_reconstruction_metrics_agree_with_the_single_metrics(images):
    extractor = TinyFeatures()
    reconstructions = (images + 0.05 * torch.randn_like(images)).clamp(0, 1)
    results = reconstruction_metrics(images, reconstructions, feature_extractor=extractor, batch_size=16)
    assert results["rfid"] == pytest.approx(compute_fid(reconstructions, images, feature_extractor=extractor))
    assert results["psnr"] == pytest.approx(psnr(images, reconstructions).mean().item(), rel=1e-6)
    assert results["ssim"] == pytest.approx(ssim(images, reconstructions).mean().item(), rel=1e-6)
    assert "lpips" not in results


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is not None, reason="torchvision is installed")
def test_lpips_without_torchvision_names_the_missing_package(images):
    with pytest.raises(ModuleNotFoundError, match="torchvision"):
        lpips(images, images)


# ---- Inception


@pytest.mark.skipif(
    importlib.util.find_spec("torch_fidelity") is not None, reason="torch-fidelity is installed"
)
def test_load_inception_without_torch_fidelity_names_the_missing_package():
    with pytest.raises(ModuleNotFoundError, match="torch-fidelity"):
        load_inception()


def test_load_inception_rejects_a_missing_weights_file_and_bad_options(tmp_path):
    with pytest.raises(ValueError, match="inception_weights: expected the path of a .pth file"):
        load_inception(tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="resize: expected one of"):
        load_inception(resize="bicubic")
    with pytest.raises(ValueError, match="output: expected one of"):
        load_inception(output="probabilities")


# ---- CLIP


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    folder = tmp_path_factory.mktemp("clip")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for letter in "abcdefghijklmnopqrstuvwxyz":
        vocab[letter] = len(vocab)
        vocab[letter + "</w>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    small = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4}
    config = CLIPConfig(
        text_config={
            **small,
            "vocab_size": len(vocab),
            "max_position_embeddings": 16,
            "bos_token_id": 0,
            "eos_token_id": 1,
            "pad_token_id": 1,
        },
        vision_config={**small, "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )
    torch.manual_seed(0)
    return CLIPModel(config).eval(), CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def test_clip_score_is_finite_and_scales_float_and_uint8_images_alike(tiny_clip):
    model, processor = tiny_clip
    images = torch.rand(3, 3, 40, 48)
    texts = ["a red cat", "dog", "an extremely long caption that the tiny model has to truncate somewhere"]
    scores = clip_score(images, texts, model, processor)
    assert scores.shape == (3,) and torch.isfinite(scores).all() and (scores.abs() <= 1).all()
    as_uint8 = clip_score(images.mul(255).round().to(torch.uint8), texts, model, processor)
    torch.testing.assert_close(as_uint8, scores, atol=1e-6, rtol=0)
    assert compute_clip_score(images, texts, model, processor, batch_size=2) == pytest.approx(
        scores.mean().item()
    )


def test_clip_score_rejects_images_outside_the_unit_range(tiny_clip):
    model, processor = tiny_clip
    with pytest.raises(ValueError, match=r"images: expected float values in \[0, 1\]"):
        clip_score(torch.rand(2, 3, 32, 32) * 2 - 1, ["a", "b"], model, processor)
    with pytest.raises(ValueError, match="texts: expected 2 captions"):
        clip_score(torch.rand(2, 3, 32, 32), ["a"], model, processor)


# ---- evaluate


@pytest.fixture
def offline_evaluate(monkeypatch):
    """`evaluate` with the network cut: any socket connection fails the test."""
    import evaluate

    def refuse(*args, **kwargs):
        raise AssertionError("evaluate tried to use the network")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(evaluate.config, "HF_EVALUATE_OFFLINE", True)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return lambda name, **kwargs: evaluate.load(evaluate_module_path(name), keep_in_memory=True, **kwargs)


def test_evaluate_modules_are_shipped_files():
    for name in EVALUATE_MODULES:
        assert evaluate_module_path(name).endswith(os.path.join(name, f"{name}.py"))
    with pytest.raises(ValueError, match="name: expected one of"):
        evaluate_module_path("fid")


def test_evaluate_fid_and_reconstruction_modules_give_the_function_values(offline_evaluate, tmp_path):
    extractor = TinyFeatures()
    originals = torch.rand(12, 3, 16, 16)
    reconstructions = (originals * 0.9 + 0.05).clamp(0, 1)
    fid = offline_evaluate("rq_fid")
    for start in (0, 6):
        fid.add_batch(predictions=reconstructions[start : start + 6], references=originals[start : start + 6])
    expected = compute_fid(reconstructions, originals, feature_extractor=extractor)
    assert fid.compute(feature_extractor=extractor)["fid"] == pytest.approx(expected, rel=1e-5)

    path = tmp_path / "reference.npz"
    save_statistics(compute_statistics(originals, extractor), path)
    fid = offline_evaluate("rq_fid", config_name="statistics")
    result = fid.compute(
        predictions=reconstructions, reference_statistics=str(path), feature_extractor=extractor
    )
    assert result["fid"] == pytest.approx(expected, rel=1e-5)

    module = offline_evaluate("rq_reconstruction")
    result = module.compute(predictions=reconstructions, references=originals, feature_extractor=extractor)
    expected = reconstruction_metrics(originals, reconstructions, feature_extractor=extractor)
    assert result == pytest.approx(expected, rel=1e-5)


def test_evaluate_inception_score_codebook_and_clip_modules_give_the_function_values(
    offline_evaluate, tiny_clip
):
    values = torch.arange(4).repeat(5).float() / 3
    images = values[:, None, None, None].expand(20, 3, 8, 8).contiguous()
    result = offline_evaluate("rq_inception_score").compute(
        predictions=images, classifier=TinyClassifier(4), splits=5
    )
    assert result["inception_score"] == pytest.approx(4.0, rel=1e-9)

    codes = torch.randint(0, 6, (5, 2, 2, 3))
    result = offline_evaluate("rq_codebook_usage").compute(predictions=codes, codebook_sizes=[6, 6, 8])
    usage = codebook_usage(codes, [6, 6, 8])
    assert result["perplexity"] == pytest.approx(codebook_perplexity(usage))
    assert result["usage"] == [counts.tolist() for counts in usage]

    model, processor = tiny_clip
    images, texts = torch.rand(3, 3, 32, 32), ["a cat", "a dog", "sky"]
    result = offline_evaluate("rq_clip_score").compute(
        predictions=images, references=texts, model=model, processor=processor
    )
    assert result["clip_score"] == pytest.approx(
        clip_score(images, texts, model, processor).mean().item(), abs=1e-6
    )


# ---- figures


def test_codebook_usage_figure_is_a_png(tmp_path):
    usage = codebook_usage(torch.randint(0, 16, (4, 4, 4, 3)), 16)
    path = plot_codebook_usage(usage, tmp_path / "usage.png", title="codebook usage")
    assert path.read_bytes().startswith(PNG_SIGNATURE)
    assert os.listdir(tmp_path) == ["usage.png"]


def test_sampling_speed_figure_is_a_png_and_the_schema_is_checked(tmp_path):
    rows = [
        {"config": config, "batch": batch, "images_per_second": speed, "implementation": implementation}
        for config in ("8x8x4", "16x16x1")
        for batch in (100, 200, 500)
        for implementation, speed in (("rq-hf", batch * 0.9), ("original", batch * 0.3))
    ]
    results = tmp_path / "speed.json"
    results.write_text(json.dumps(rows))
    path = plot_sampling_speed(results, tmp_path / "speed.png")
    assert path.read_bytes().startswith(PNG_SIGNATURE)
    results.write_text(json.dumps([{**rows[0], "batch": 0}]))
    with pytest.raises(ValueError, match=r"results\[0\].batch: expected a positive int, got 0"):
        plot_sampling_speed(results, tmp_path / "bad.png")
    results.write_text(json.dumps([{"config": "8x8x4", "batch": 1}]))
    with pytest.raises(ValueError, match=r"results\[0\]: expected keys"):
        plot_sampling_speed(results, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_sampling_speed_figure_keeps_only_the_requested_stage(tmp_path):
    rows = [
        {
            "config": "8x8x4",
            "batch": 100,
            "images_per_second": speed * scale,
            "implementation": name,
            "stage": stage,
        }
        for name, speed in (("rq-hf", 250.0), ("original", 33.0))
        for stage, scale in (("AR", 1.0), ("end to end", 0.5))
    ]
    results, ar_results = tmp_path / "speed.json", tmp_path / "ar.json"
    results.write_text(json.dumps(rows))
    ar_results.write_text(json.dumps([row for row in rows if row["stage"] == "AR"]))
    filtered = plot_sampling_speed(results, tmp_path / "filtered.png", stage="AR").read_bytes()
    assert filtered.startswith(PNG_SIGNATURE)
    assert filtered == plot_sampling_speed(ar_results, tmp_path / "ar.png").read_bytes()
    assert filtered != plot_sampling_speed(results, tmp_path / "end.png", stage="end to end").read_bytes()
    with pytest.raises(ValueError, match=r"stage: expected a stage present in .*, got 'decode'"):
        plot_sampling_speed(results, tmp_path / "bad.png", stage="decode")
    assert not (tmp_path / "bad.png").exists()


# ---- bad input


def test_mismatched_image_sizes_are_rejected(images):
    extractor = TinyFeatures()
    with pytest.raises(
        ValueError, match=r"images: expected images of size \(H, W\) = \(16, 16\), got \(32, 32\)"
    ):
        compute_fid(torch.rand(4, 3, 32, 32), images, feature_extractor=extractor)
    with pytest.raises(ValueError, match="reconstructions: expected the shape of originals"):
        reconstruction_metrics(images, images[:, :, :8], feature_extractor=extractor)
    with pytest.raises(ValueError, match="reconstructions: expected the shape of originals"):
        psnr(images, images[:10])


def test_too_few_samples_for_a_covariance_are_rejected(images):
    with pytest.raises(ValueError, match="features: expected at least 2 samples for a covariance"):
        statistics_from_features(torch.randn(1, 8))
    with pytest.raises(ValueError, match="features: expected at least 2 samples for a covariance, got 1"):
        compute_fid(images[:1], images, feature_extractor=TinyFeatures())
    with pytest.raises(ValueError, match="probabilities: expected at least 10 samples"):
        inception_score(torch.full((5, 2), 0.5))


def test_statistics_files_without_mu_and_sigma_are_rejected(tmp_path):
    path = tmp_path / "broken.npz"
    np.savez(path, mu=np.zeros(4))
    with pytest.raises(
        ValueError, match=r"path: expected an .npz file with arrays 'mu' and 'sigma', got keys \['mu'\]"
    ):
        load_statistics(path)
    with pytest.raises(ValueError, match="path: expected an existing .npz file"):
        load_statistics(tmp_path / "missing.npz")
    with pytest.raises(ValueError, match="path: expected a file in an existing folder"):
        save_statistics(statistics_from_features(torch.randn(3, 2)), tmp_path / "missing" / "stats.npz")


def test_bad_statistics_are_rejected_never_nan():
    with pytest.raises(ValueError, match="sigma: expected shape"):
        FeatureStatistics(np.zeros(3), np.eye(4))
    with pytest.raises(ValueError, match="mu, sigma: expected finite values"):
        FeatureStatistics(np.array([0.0, np.nan]), np.eye(2))
    with pytest.raises(ValueError, match="sigma: expected a symmetric covariance"):
        FeatureStatistics(np.zeros(2), np.array([[1.0, 0.5], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="statistics_a.sigma: expected a positive semi-definite covariance"):
        frechet_distance(
            FeatureStatistics(np.zeros(2), -np.eye(2)), FeatureStatistics(np.zeros(2), np.eye(2))
        )
    with pytest.raises(ValueError, match="statistics_b: expected 2 features like statistics_a, got 3"):
        frechet_distance(FeatureStatistics(np.zeros(2), np.eye(2)), FeatureStatistics(np.zeros(3), np.eye(3)))


def test_wrong_dtype_range_and_extractor_output_are_rejected(images):
    extractor = TinyFeatures()
    with pytest.raises(ValueError, match=r"images: expected float values in \[0, 1\].*got values in \[-1"):
        compute_fid(images * 2 - 1, images, feature_extractor=extractor)
    with pytest.raises(ValueError, match="images: expected dtype float .* or uint8, got torch.int32"):
        compute_fid(images.mul(255).int(), images, feature_extractor=extractor)
    with pytest.raises(ValueError, match=r"images: expected shape \(B, 3, H, W\)"):
        compute_fid(images[:, :1], images, feature_extractor=extractor)
    with pytest.raises(ValueError, match="feature_extractor: expected an output of shape"):
        compute_fid(images, images, feature_extractor=nn.Identity())
    with pytest.raises(ValueError, match="features: expected finite values"):
        statistics_from_features(torch.tensor([[0.0, float("nan")], [1.0, 2.0]]))
    with pytest.raises(ValueError, match=r"codes: expected values in \[0, 4\) at depth 1"):
        codebook_usage(torch.tensor([[[[0, 4]]]]), 4)
    with pytest.raises(ValueError, match="codes: expected an integer dtype"):
        codebook_usage(torch.zeros(1, 1, 1, 2), 4)
    with pytest.raises(ValueError, match="codebook_sizes: expected a positive int or 2 positive ints"):
        codebook_usage(torch.zeros(1, 1, 1, 2, dtype=torch.long), [4])
