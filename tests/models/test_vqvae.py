import torch

from models.config import PRESETS
from models.vqvae import VQVAE


def tiny_model(seed: int = 0) -> VQVAE:
    torch.manual_seed(seed)
    return VQVAE(PRESETS["tiny"])


def test_shapes_and_index_range() -> None:
    model = tiny_model()
    x = torch.rand(3, 1, 32, 48)
    out = model(x)
    stride = model.config.stride
    assert out.reconstruction.shape == x.shape
    assert out.indices.shape == (3, 32 // stride, 48 // stride)
    assert out.indices.dtype == torch.int64
    assert int(out.indices.min()) >= 0 and int(out.indices.max()) < model.config.codebook_size
    assert out.vq_loss.ndim == 0 and out.perplexity.ndim == 0
    assert 1.0 <= float(out.perplexity) <= model.config.codebook_size


def test_decode_indices_of_encode_equals_eval_reconstruction() -> None:
    model = tiny_model().eval()
    x = torch.rand(2, 1, 32, 32)
    with torch.inference_mode():
        expected = model(x).reconstruction
        assert torch.equal(model.decode_indices(model.encode(x)), expected)


def conv_weights(model: VQVAE) -> list[torch.Tensor]:
    return [p for p in model.parameters() if p.ndim == 4]


def test_for_inference_keeps_conv_weights_in_channels_last_with_the_same_outputs() -> None:
    """The same codes and pixels; bit-identical but for an image of one grid cell, whose (B, C, 1, 1) latents are
    alike in both layouts and meet another kernel (differences of a few 1e-7 on the shipped model)."""
    model = tiny_model().eval()
    stride = model.config.stride
    x = torch.rand(2, 1, 37, 29)  # padded to the stride, then cropped
    one_cell = torch.rand(1, 1, stride, stride)
    with torch.inference_mode():
        before = [model.reconstruct(image) for image in (x, one_cell)]
    assert model.for_inference() is model
    assert not model.training
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in conv_weights(model))
    assert any(not w.is_contiguous() for w in conv_weights(model))  # the layout did change
    with torch.inference_mode():
        (indices, reconstruction), (cell_indices, cell) = (model.reconstruct(image) for image in (x, one_cell))
        assert torch.equal(indices, before[0][0]) and torch.equal(reconstruction, before[0][1])
        assert torch.equal(cell_indices, before[1][0])
        torch.testing.assert_close(cell, before[1][1], rtol=0, atol=1e-6)
        assert torch.equal(model.decode_indices(indices)[..., :37, :29].clamp(0, 1), reconstruction)


def test_reconstruct_keeps_any_size_and_range() -> None:
    model = tiny_model().eval()
    x = torch.rand(1, 1, 37, 29)
    indices, recon = model.reconstruct(x)
    assert recon.shape == x.shape
    assert indices.shape == (1, 10, 8)  # ceil(37/4), ceil(29/4)
    assert float(recon.min()) >= 0.0 and float(recon.max()) <= 1.0


def test_eval_mode_leaves_codebook_unchanged_and_training_updates_it() -> None:
    model = tiny_model()
    before = {k: v.clone() for k, v in model.quantizer.state_dict().items()}
    model.eval()
    model(torch.rand(4, 1, 32, 32))
    for key, value in model.quantizer.state_dict().items():
        assert torch.equal(value, before[key]), key
    model.train()
    model(torch.rand(4, 1, 32, 32))
    assert not torch.equal(model.quantizer.codebook, before["codebook"])


def test_dead_codes_restart_onto_encoder_outputs() -> None:
    model = tiny_model()
    quantizer = model.quantizer
    quantizer.ema_count.zero_()  # every code looks dead
    latents = torch.randn(2, model.config.embedding_dim, 4, 4)
    quantizer.train()
    quantizer(latents)
    assert bool((quantizer.ema_count >= quantizer.dead_code_threshold).all())
    restarted = quantizer.ema_count == 1.0
    assert int(restarted.sum()) > model.config.codebook_size // 2
    flat = torch.nn.functional.normalize(latents, dim=1).permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
    nearest = torch.cdist(quantizer.codebook[restarted], flat).min(dim=1).values
    assert float(nearest.max()) < 0.05  # restarted codes sit on (noisy copies of) encoder outputs


def test_quantizer_runs_in_fp32_under_autocast() -> None:
    model = tiny_model().eval()
    latents = torch.randn(2, model.config.embedding_dim, 8, 8)
    plain = model.quantize(latents)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = model.quantize(latents.bfloat16())
    assert mixed.quantized.dtype == torch.float32
    assert torch.equal(plain.indices, model.quantize(latents.bfloat16().float()).indices)
    assert torch.equal(mixed.indices, model.quantize(latents.bfloat16().float()).indices)
