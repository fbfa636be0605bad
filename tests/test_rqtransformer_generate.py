"""RQ-Transformer options, losses and generation on tiny random models."""

import pytest
import torch

from rq_hf.configuration_rqtransformer import RQTransformerConfig
from rq_hf.generation_rqtransformer import sample_from_logits
from rq_hf.modeling_rqtransformer import RQTransformerForImageGeneration

VARIANTS = {
    "released_flags": {},
    "separate_codebooks_of_different_sizes": {
        "vocab_size": [7, 5, 6],
        "shared_codebook": False,
        "shared_tok_emb": False,
        "shared_cls_emb": False,
    },
    "learned_input_embeddings": {"input_emb_vqvae": False, "shared_tok_emb": False, "vocab_size": [7, 5, 6],
                                 "shared_codebook": False, "shared_cls_emb": False},
    "learned_depth_embeddings": {"head_emb_vqvae": False},
    "learned_embeddings_only": {"input_emb_vqvae": False, "head_emb_vqvae": False, "shared_tok_emb": False},
    "per_depth_context": {"cumsum_depth_ctx": False},
    "per_depth_classifiers": {"shared_cls_emb": False},
    "gelu_v2_without_biases": {"hidden_act": "quick_gelu", "mlp_bias": False, "attention_bias": False},
    "long_condition_with_classifier": {"condition_vocab_size": 13, "condition_length": 4},
    "unconditional": {"condition_vocab_size": 0},
    "depth_transformer_heads_differ": {"num_depth_heads": 4, "num_depth_layers": 2},
}  # fmt: skip


def tiny_model(seed: int = 0, **overrides) -> RQTransformerForImageGeneration:
    """A random model with a 2x3 map of 3 codes, its codebooks set; eval mode."""
    options = {
        "code_shape": (2, 3, 3),
        "vocab_size": 6,
        "condition_vocab_size": 5,
        "condition_length": 1,
        "hidden_size": 16,
        "codebook_dim": 4,
        "num_spatial_layers": 2,
        "num_depth_layers": 1,
        "num_spatial_heads": 2,
        "num_depth_heads": 2,
        "initializer_range": 0.5,
    }
    options.update(overrides)
    torch.manual_seed(seed)
    model = RQTransformerForImageGeneration(RQTransformerConfig(**options)).eval()
    if model.code_embeddings.codebook is not None:
        books = [torch.randn(size, options["codebook_dim"]) for size in model.config.vocab_size]
        model.set_codebook_embeddings(books[:1] * len(books) if model.config.shared_codebook else books)
    return model


def conditions(model: RQTransformerForImageGeneration, batch: int = 3) -> torch.Tensor | None:
    if not model.config.is_conditional:
        return None
    generator = torch.Generator().manual_seed(1)
    return torch.randint(model.config.condition_vocab_size, (batch, model.config.condition_sequence_length),
                         generator=generator)  # fmt: skip


def random_codes(model: RQTransformerForImageGeneration, batch: int = 3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(2)
    height, width, _ = model.config.code_shape
    return torch.stack(
        [
            torch.randint(size, (batch, height, width), generator=generator)
            for size in model.config.vocab_size
        ],
        -1,
    )


def sample(model, use_cache=True, seed=0, **kwargs) -> torch.Tensor:
    kwargs.setdefault("condition_ids", conditions(model))
    if kwargs["condition_ids"] is None and "prefix_codes" not in kwargs:
        kwargs.setdefault("num_samples", 3)
    return model.generate(generator=torch.Generator().manual_seed(seed), use_cache=use_cache, **kwargs)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_option_runs_and_cached_equals_uncached(variant):
    model = tiny_model(**VARIANTS[variant])
    config = model.config
    codes = random_codes(model)
    output = model(codes, condition_ids=conditions(model), labels=codes)
    assert output.logits.shape == (3, 2, 3, 3, max(config.vocab_size))
    assert torch.isfinite(output.loss)
    for d, size in enumerate(config.vocab_size):
        assert torch.isfinite(output.logits[..., d, :size]).all()
        assert torch.isneginf(output.logits[..., d, size:]).all()
    if config.condition_length > 1:
        assert output.condition_logits.shape == (3, config.condition_length - 1, config.condition_vocab_size)
    else:
        assert output.condition_logits is None
    settings = {"temperature": 1.3, "top_k": [4, 3, 5], "top_p": 0.9}
    cached = sample(model, **settings)
    assert torch.equal(cached, sample(model, use_cache=False, **settings))
    for d, size in enumerate(config.vocab_size):
        assert 0 <= int(cached[..., d].min()) and int(cached[..., d].max()) < size


def test_same_generator_seed_gives_same_codes():
    model = tiny_model()
    first, again, other = sample(model, seed=5), sample(model, seed=5), sample(model, seed=6)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_generation_config_supplies_the_defaults():
    model = tiny_model()
    model.generation_config.top_k = 1
    assert torch.equal(sample(model, seed=1), sample(model, seed=2))
    assert torch.equal(sample(model), sample(model, top_k=1))


def test_sample_from_logits_top_k_keeps_ties_and_top_p_the_smallest_nucleus():
    logits = torch.tensor([[4.0, 1.0, 4.0, 0.0, 3.0]]).repeat(4000, 1)
    noise = torch.rand(logits.shape, generator=torch.Generator().manual_seed(0))
    assert set(sample_from_logits(logits, noise, top_k=1).tolist()) == {0, 2}
    assert set(sample_from_logits(logits, noise, top_k=3).tolist()) == {0, 2, 4}
    probs = torch.softmax(logits[0], -1)  # 0.42, 0.02, 0.42, 0.01, 0.15
    assert set(sample_from_logits(logits, noise, top_p=float(probs[0]) - 0.01).tolist()) == {0}
    assert set(sample_from_logits(logits, noise, top_p=float(probs[0] * 2) + 0.01).tolist()) == {0, 2, 4}
    assert set(sample_from_logits(logits, noise, top_p=1e-6).tolist()) == {0}
    assert set(sample_from_logits(logits, noise).tolist()) == {0, 1, 2, 3, 4}
    cold = sample_from_logits(logits, noise, temperature=0.05)
    assert set(cold.tolist()) == {0, 2}


def test_per_depth_top_k_and_top_p_apply_to_their_own_depth():
    model = tiny_model(
        shared_cls_emb=False, vocab_size=[4, 5, 6], shared_codebook=False, shared_tok_emb=False
    )
    hand_made = torch.tensor([[3.0, 0.0, 2.0, 1.0, 0.0, 0.0], [0.0, 5.0, 5.0, 0.0, 1.0, 0.0], [1.0] * 6])
    with torch.no_grad():
        model.classifier.linear.weight.zero_()
        model.classifier.linear.bias.copy_(hand_made)
    codes = model.generate(
        condition_ids=torch.zeros(300, 1, dtype=torch.long),
        top_k=[1, 2, 6],
        top_p=[1.0, 1.0, 0.4],
        generator=torch.Generator().manual_seed(0),
    )
    assert set(codes[..., 0].unique().tolist()) == {0}
    assert set(codes[..., 1].unique().tolist()) == {1, 2}
    # uniform over 6 codes: the 0.4 nucleus is the first 3 (ties broken by sort order)
    assert len(codes[..., 2].unique()) == 3


def test_guidance_scale_one_equals_no_guidance():
    model = tiny_model(condition_vocab_size=6, null_condition_id=5)
    plain = sample(model)
    assert torch.equal(sample(model, guidance_scale=1.0), plain)
    guided = sample(model, guidance_scale=3.0)
    assert torch.equal(guided, sample(model, guidance_scale=3.0, use_cache=False))
    model.generation_config.guidance_scale = 3.0
    assert torch.equal(sample(model), guided)


def test_prefix_completion_keeps_the_prefix():
    model = tiny_model()
    codes = random_codes(model)
    rows = sample(model, prefix_codes=codes[:, :1])
    assert torch.equal(rows[:, :1], codes[:, :1])
    assert torch.equal(rows, sample(model, prefix_codes=codes[:, :1], use_cache=False))
    raster = sample(model, prefix_codes=codes.flatten(1, 2)[:, :4])
    assert torch.equal(raster.flatten(1, 2)[:, :4], codes.flatten(1, 2)[:, :4])
    assert torch.equal(sample(model, prefix_codes=codes), codes)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"condition_ids": torch.tensor([[5]])}, ValueError, r"condition_ids: expected ids in \[0, 5\), got"),
        ({"condition_ids": torch.tensor([[-1]])}, ValueError, r"condition_ids: expected ids in \[0, 5\)"),
        (
            {"condition_ids": torch.zeros(2, 3, dtype=torch.long)},
            ValueError,
            r"condition_ids: expected shape \(B, 1\)",
        ),
        ({"condition_ids": torch.zeros(2, 1)}, TypeError, "condition_ids: expected an integer torch.Tensor"),
        (
            {"condition_ids": None, "num_samples": 2},
            ValueError,
            "condition_ids: expected .* for a conditional model",
        ),
        ({"top_k": 0}, ValueError, "top_k: expected an int >= 1"),
        ({"top_k": [1, 2]}, ValueError, "top_k: expected an int >= 1 or a list of 3"),
        ({"top_k": 1.5}, ValueError, "top_k: expected an int >= 1"),
        ({"top_p": 0.0}, ValueError, r"top_p: expected a float in \(0, 1\]"),
        ({"top_p": 1.5}, ValueError, r"top_p: expected a float in \(0, 1\]"),
        ({"temperature": 0.0}, ValueError, "temperature: expected a float > 0"),
        ({"temperature": -1.0}, ValueError, "temperature: expected a float > 0"),
        (
            {"guidance_scale": 2.0},
            ValueError,
            "guidance_scale: expected 1.0 for a model without .*null_condition_id",
        ),
        (
            {"prefix_codes": torch.zeros(2, 1, 2, 3, dtype=torch.long)},
            ValueError,
            r"prefix_codes: expected shape",
        ),
        (
            {"prefix_codes": torch.full((2, 1, 3, 3), 6)},
            ValueError,
            r"prefix_codes: expected codes in \[0, vocab",
        ),
        (
            {"prefix_codes": torch.zeros(2, 1, 3, 3)},
            TypeError,
            "prefix_codes: expected an integer torch.Tensor",
        ),
        (
            {"prefix_codes": torch.zeros(3, 1, 3, 3, dtype=torch.long)},
            ValueError,
            "num_samples: expected one batch",
        ),
        ({"num_samples": 0}, ValueError, "num_samples: expected an int >= 1"),
        ({"num_samples": 3}, ValueError, "num_samples: expected one batch size"),
        ({"generator": "seed"}, ValueError, "generator: expected a torch.Generator on cpu"),
        ({"use_cache": False, "compile": True}, ValueError, "compile: expected False with use_cache=False"),
    ],
)
def test_bad_generate_input_raises(kwargs, error, message):
    model = tiny_model()
    kwargs.setdefault("condition_ids", torch.zeros(2, 1, dtype=torch.long))
    with pytest.raises(error, match=message):
        model.generate(**kwargs)


def test_unconditional_model_needs_a_batch_size():
    with pytest.raises(ValueError, match="num_samples: expected an int >= 1 when neither"):
        tiny_model(condition_vocab_size=0).generate()


def test_bad_forward_input_raises():
    model = tiny_model()
    codes = random_codes(model)
    cond = conditions(model)
    with pytest.raises(ValueError, match=r"codes: expected shape \(B, 2, 3, 3\)"):
        model(codes[:, :1], condition_ids=cond)
    with pytest.raises(ValueError, match=r"codes: expected codes in \[0, vocab_size\[d\]\)"):
        model(codes + 6, condition_ids=cond)
    with pytest.raises(ValueError, match=r"labels: expected shape \(3, 2, 3, 3\)"):
        model(codes, condition_ids=cond, labels=codes[:, :1])
    with pytest.raises(ValueError, match="soft_labels: expected None when labels are given"):
        model(codes, condition_ids=cond, labels=codes, soft_labels=torch.zeros(3, 2, 3, 3, 6))


def test_missing_codebook_raises():
    model = RQTransformerForImageGeneration(RQTransformerConfig(code_shape=(1, 2, 2), vocab_size=4, hidden_size=8,
                                                                codebook_dim=4, num_spatial_heads=2, num_depth_heads=2,
                                                                num_spatial_layers=1, num_depth_layers=1))  # fmt: skip
    with pytest.raises(ValueError, match="codebook: expected the RQ-VAE codebooks"):
        model.generate(num_samples=1)


def test_set_codebooks_checks_shapes_and_sharing():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"codebooks\[1\]: expected shape \(6, 4\), got \(6, 5\)"):
        model.set_codebook_embeddings([torch.randn(6, 4), torch.randn(6, 5), torch.randn(6, 4)])
    with pytest.raises(ValueError, match="codebooks: expected one shared codebook"):
        model.set_codebook_embeddings([torch.randn(6, 4) for _ in range(3)])
    with pytest.raises(TypeError, match="vqvae: expected a model with get_codebook_embeddings"):
        model.load_codebooks_from_rqvae(torch.nn.Linear(2, 2))

    class FakeRQVAE:
        def get_codebook_embeddings(self):
            return [torch.arange(24.0).view(6, 4)] * 3

    model.load_codebooks_from_rqvae(FakeRQVAE())
    assert torch.equal(model.code_embeddings.codebook, torch.arange(24.0).view(6, 4))
    separate = tiny_model(**VARIANTS["separate_codebooks_of_different_sizes"])
    books = [torch.randn(size, 4) for size in (7, 5, 6)]
    separate.set_codebook_embeddings(books)
    assert torch.equal(separate.code_embeddings.codebook, torch.cat(books))


def test_nan_logits_raise_instead_of_returning_codes():
    model = tiny_model()
    with torch.no_grad():
        model.classifier.norm.weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="NaN logits"):
        sample(model)


def test_soft_labels_with_different_vocab_sizes_match_hard_labels():
    model = tiny_model(**VARIANTS["separate_codebooks_of_different_sizes"])
    codes = random_codes(model)
    labels = codes.clone()
    labels[0, 0, 0, 0] = -100
    hard = model(codes, condition_ids=conditions(model), labels=labels).loss
    one_hot = torch.nn.functional.one_hot(codes, 7).float()
    one_hot[0, 0, 0, 0] = 0.0
    soft = model(codes, condition_ids=conditions(model), soft_labels=one_hot).loss
    assert torch.isfinite(soft)
    torch.testing.assert_close(soft * codes.numel(), hard * (codes.numel() - 1))


def test_gradient_checkpointing_gives_the_same_gradients():
    model = tiny_model(**VARIANTS["long_condition_with_classifier"], residual_dropout=0.0).train()
    codes, cond = random_codes(model), conditions(model)
    model(codes, condition_ids=cond, labels=codes).loss.backward()
    reference = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    model.activation_checkpointing_enable()
    model(codes, condition_ids=cond, labels=codes).loss.backward()
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(parameter.grad, reference[name], msg=name)
    assert "code_embeddings.codebook" not in dict(model.named_parameters())


def test_weights_are_initialised_gpt2_style():
    model = tiny_model(hidden_size=64, initializer_range=0.02, num_spatial_heads=4, num_depth_heads=4)
    weight = model.spatial_layers[0].mlp.fc1.weight.detach()
    assert abs(float(weight.std()) - 0.02) < 0.002 and abs(float(weight.mean())) < 0.002
    assert float(model.spatial_layers[0].mlp.fc1.bias.detach().abs().max()) == 0.0
    assert abs(float(model.spatial_position_embeddings.detach().std()) - 0.02) < 0.005
    assert torch.equal(model.classifier.norm.weight, torch.ones(64))


def test_bfloat16_generation_samples_from_float32_logits():
    model = tiny_model().to(torch.bfloat16)
    codes = sample(model, top_k=2)
    assert codes.dtype == torch.long and codes.shape == (3, 2, 3, 3)
    assert int(codes.max()) < 6 and int(codes.min()) >= 0


def test_decode_step_compiles_as_one_graph():
    model = tiny_model()
    torch._dynamo.reset()
    options = {"backend": "eager", "fullgraph": True}
    compiled = sample(model, compile=options)
    assert torch.equal(compiled, sample(model))
    decoder = model._compiled_decoder
    assert decoder.compile_options == options
    sample(model, compile=dict(options))
    assert model._compiled_decoder is decoder
    other_options = {"backend": "aot_eager", "fullgraph": True}
    assert torch.equal(sample(model, compile=other_options), compiled)
    assert model._compiled_decoder.compile_options == other_options
    torch._dynamo.reset()


def test_compile_true_means_cuda_graphs_on_gpu_and_frozen_gemm_templates_on_cpu():
    from rq_hf.generation_rqtransformer import default_compile_options, freezes_weights

    gpu = default_compile_options(torch.device("cuda"))
    assert gpu == {"mode": "reduce-overhead", "fullgraph": True} and not freezes_weights(gpu)
    cpu = default_compile_options(torch.device("cpu"))
    assert cpu["fullgraph"] and cpu["options"]["max_autotune"] and freezes_weights(cpu)
    torch.compile(lambda x: x, **cpu)  # options torch.compile accepts (mode and options exclude each other)


@pytest.mark.slow
def test_compiled_step_with_frozen_weights_recompiles_after_a_weight_change():
    from rq_hf.generation_rqtransformer import StaticCacheDecoder

    model = tiny_model()
    options = {"fullgraph": True, "options": {"freezing": True}}  # compile=True on CPU, without autotuning
    torch._dynamo.reset()
    assert torch.equal(sample(model, compile=options), sample(model))
    decoder = model._compiled_decoder
    assert decoder.frozen_weights is not None and decoder.weights_unchanged()
    sample(model, compile=options)
    assert model._compiled_decoder is decoder
    with torch.no_grad():
        model.spatial_layers[0].mlp.fc1.weight.mul_(-2.0)
    assert not decoder.weights_unchanged()
    changed = sample(model)
    assert torch.equal(sample(model, compile=options), changed)  # not the graph holding the old weights
    assert model._compiled_decoder is not decoder
    shared_cache = torch._dynamo.eval_frame._debug_get_cache_entry_list(
        StaticCacheDecoder.decode_step.__code__
    )
    assert shared_cache == []  # each frozen decoder compiled into a dynamo cache of its own
    torch._dynamo.reset()


@pytest.mark.parametrize(
    "variant", ["released_flags", "gelu_v2_without_biases", "depth_transformer_heads_differ"]
)
def test_fused_qkv_projections_give_the_same_logits_and_codes(variant, tmp_path):
    model = tiny_model(**VARIANTS[variant])
    codes, cond = random_codes(model), conditions(model)
    expected_logits, expected_codes = model(codes, condition_ids=cond).logits, sample(model, top_k=3)
    model.fuse_qkv_projections()
    attention = model.spatial_layers[0].self_attn
    assert attention.fused_qkv_weight.shape == (48, 16)
    assert (attention.fused_qkv_bias is None) == (attention.q_proj.bias is None)
    torch.testing.assert_close(model(codes, condition_ids=cond).logits, expected_logits, rtol=1e-5, atol=1e-5)
    assert torch.equal(sample(model, top_k=3), expected_codes)
    assert torch.equal(sample(model, top_k=3, use_cache=False), expected_codes)

    model.save_pretrained(tmp_path)
    reloaded = RQTransformerForImageGeneration.from_pretrained(tmp_path)
    assert reloaded.spatial_layers[0].self_attn.fused_qkv_weight is None
    assert torch.equal(sample(reloaded.eval(), top_k=3), expected_codes)

    model.unfuse_qkv_projections()
    assert all(
        layer.self_attn.fused_qkv_weight is None for layer in (*model.spatial_layers, *model.depth_layers)
    )
    assert torch.equal(model(codes, condition_ids=cond).logits, expected_logits)


def test_fused_qkv_projections_are_refused_in_training_mode():
    model = tiny_model()
    model.fuse_qkv_projections()
    model.train()
    with pytest.raises(RuntimeError, match="fused_qkv_weight: expected unfused projections in training mode"):
        model(random_codes(model), condition_ids=conditions(model))


def test_fused_decode_step_compiles_as_one_graph():
    model = tiny_model()
    expected = sample(model)
    model.fuse_qkv_projections()
    torch._dynamo.reset()
    assert torch.equal(sample(model, compile={"backend": "eager", "fullgraph": True}), expected)
    torch._dynamo.reset()


def test_compiled_steps_after_the_first_check_only_differentiating_guards(monkeypatch):
    from rq_hf.generation_rqtransformer import StaticCacheDecoder

    def current_stance():  # set_stance replaces the module's stance object
        stance = torch._dynamo.eval_frame._stance
        return stance.stance, stance.skip_guard_eval_unsafe

    compile_decoder, stances = StaticCacheDecoder.compile, []

    def recording_compile(self, **options):
        compile_decoder(self, **options)
        compiled_step = self.step

        def step(*args):
            stances.append(current_stance())
            return compiled_step(*args)

        self.step = step

    monkeypatch.setattr(StaticCacheDecoder, "compile", recording_compile)
    model, options = tiny_model(), {"backend": "eager", "fullgraph": True}
    expected = sample(model)
    torch._dynamo.reset()
    assert torch.equal(sample(model, compile=options), expected)
    assert stances == [("default", False)] + [("default", True)] * 4  # 6 positions: prefill + 5 steps
    assert current_stance() == ("default", False)
    stances.clear()
    model._compiled_decoder = None
    with torch.compiler.set_stance("force_eager"):
        assert torch.equal(sample(model, compile=options), expected)
    assert stances == [("force_eager", False)] * 5
    torch._dynamo.reset()
