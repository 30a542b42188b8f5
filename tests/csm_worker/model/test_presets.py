"""Presets (`random:*`): built once into the cache in the hub format, loaded back through `from_pretrained`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from csm_worker import ModelLoadError, load_pretrained
from csm_worker.model import presets
from csm_worker.model.loading import resolve_model_dir
from csm_worker.model.presets import LLAMA3_SPECIALS, csm_config, get_preset, preset_dir


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sorted(sa) == sorted(sb)
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name


def test_preset_is_cached_in_hub_format_and_reused(gen, cache_dir, monkeypatch):
    folder = preset_dir("random:tiny")
    assert folder.parent == cache_dir / "presets"
    assert folder == gen.loaded.path
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "csm" and config["hidden_size"] == 128

    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    listing = sorted(p.name for p in folder.parent.iterdir())

    def build_again(*args):
        raise AssertionError("the preset was built again although its folder exists")

    monkeypatch.setattr(presets, "write_preset", build_again)
    assert preset_dir("random:tiny") == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp, "the second call rebuilt the preset"
    assert sorted(p.name for p in folder.parent.iterdir()) == listing, "no staging folders left behind"
    assert not any(name.startswith(".tmp-") for name in listing)


def test_loading_twice_gives_identical_weights(gen):
    again = load_pretrained("random:tiny")
    assert again.path == gen.loaded.path and again.weights_hash == gen.loaded.weights_hash
    assert_same_weights(again.hf, gen.loaded.hf)
    assert not again.hf.training


def test_a_fresh_build_is_bit_identical(gen, tmp_path, monkeypatch):
    """Seeded: another machine (here: another cache folder) builds exactly the same weights."""
    monkeypatch.setenv("CSM_RENDER_CACHE", str(tmp_path))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(987)  # whatever state the global generator is in
        folder = preset_dir("random:tiny")
    assert folder.parent == tmp_path / "presets"
    ours, theirs = load_file(folder / "model.safetensors"), load_file(gen.loaded.path / "model.safetensors")
    assert sorted(ours) == sorted(theirs)
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name


def test_small_preset_config_matches_its_specification():
    cfg = csm_config(get_preset("random:small"))
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads,
            cfg.head_dim, cfg.intermediate_size) == (4, 512, 8, 2, 64, 1536)
    dd = cfg.depth_decoder_config
    assert (dd.num_hidden_layers, dd.hidden_size, dd.num_attention_heads, dd.num_key_value_heads, dd.head_dim,
            dd.intermediate_size) == (2, 256, 4, 2, 64, 768)
    assert dd.backbone_hidden_size == 512
    assert (cfg.num_codebooks, cfg.vocab_size, dd.num_codebooks, dd.vocab_size) == (32, 2051, 32, 2051)
    assert cfg.max_position_embeddings == 2048 and dd.max_position_embeddings == 33
    assert cfg.codec_config.num_quantizers == 32


def test_csm_1b_preset_config_matches_the_release():
    """Config only: instantiating random:csm-1b would cost gigabytes."""
    cfg = csm_config(get_preset("random:csm-1b"))
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads,
            cfg.head_dim, cfg.intermediate_size) == (16, 2048, 32, 8, 64, 8192)
    dd = cfg.depth_decoder_config
    assert (dd.num_hidden_layers, dd.hidden_size, dd.num_attention_heads, dd.num_key_value_heads, dd.head_dim,
            dd.intermediate_size) == (4, 1024, 8, 2, 128, 8192)
    assert (cfg.text_vocab_size, cfg.bos_token_id, cfg.audio_token_id, cfg.audio_eos_token_id) == \
        (128256, 128000, 128002, 128003)
    assert (cfg.pad_token_id, cfg.codebook_pad_token_id, cfg.codebook_eos_token_id) == (128002, 2050, 0)
    assert (cfg.max_position_embeddings, dd.max_position_embeddings, cfg.vocab_size) == (2048, 33, 2051)
    for rope in (cfg.rope_parameters, dd.rope_parameters):
        assert {k: rope[k] for k in ("rope_type", "rope_theta", "factor", "low_freq_factor", "high_freq_factor",
                                     "original_max_position_embeddings")} == \
            {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
             "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    assert cfg.codec_config.num_quantizers == 32 and cfg.codec_config.codebook_size == 2048
    assert cfg.codec_config.sampling_rate == 24000 and cfg.codec_config.frame_rate == 12.5


def test_unknown_preset_is_a_clear_error(cache_dir):
    with pytest.raises(Exception, match=r"unknown model preset 'random:huge'.*random:tiny.*random:small") as info:
        load_pretrained("random:huge")
    assert isinstance(info.value, (ValueError, ModelLoadError))
    assert not list((cache_dir / "presets").glob("huge*")), "nothing is built for an unknown preset"


def test_unknown_preset_raises_model_load_error():
    with pytest.raises(ModelLoadError):
        load_pretrained("random:huge")


def test_local_folder_saved_with_save_pretrained_loads(gen, tmp_path):
    gen.loaded.hf.save_pretrained(tmp_path)
    gen.loaded.tokenizer.save_pretrained(tmp_path)
    loaded = load_pretrained(str(tmp_path))
    assert loaded.path == tmp_path.resolve() and loaded.name == str(tmp_path)
    assert_same_weights(loaded.hf, gen.loaded.hf)
    assert loaded.tokenizer.encode("[0]Hi", add_special_tokens=False) == \
        gen.loaded.tokenizer.encode("[0]Hi", add_special_tokens=False)
    assert len(loaded.weights_hash) == 16


def test_folder_without_config_is_a_model_load_error(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="config.json"):
        resolve_model_dir(str(tmp_path))
    with pytest.raises(ModelLoadError, match="config.json"):
        load_pretrained(str(tmp_path))


def test_tokenizer_has_the_llama3_specials_at_the_config_ids(gen):
    tok, cfg = gen.loaded.tokenizer, gen.loaded.config
    ids = [tok.convert_tokens_to_ids(t) for t in LLAMA3_SPECIALS]
    assert ids == [cfg.bos_token_id, cfg.bos_token_id + 1, cfg.audio_token_id, cfg.audio_eos_token_id]
    assert tok.bos_token_id == cfg.bos_token_id and tok.eos_token_id == cfg.bos_token_id + 1
    assert max(ids) < cfg.text_vocab_size
    # Special tokens stay single tokens inside text; ordinary text is bytes below them.
    text = tok.encode("[1]Hi<|audio_eos|>", add_special_tokens=False)
    assert text[-1] == cfg.audio_eos_token_id and all(t < cfg.bos_token_id for t in text[:-1])
    assert tok.decode(text[:-1]) == "[1]Hi"


def test_preset_codec_is_not_degenerate(gen, noise_audio):
    """transformers leaves Mimi's codebooks at zero; presets must randomize them, or every audio encodes to
    all-zero (EOS) frames and every code sequence decodes to the same audio, hiding bugs in codes and audio."""
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 2048, (2, 32, 4))
    assert not np.allclose(gen.codec.decode(a), gen.codec.decode(b)), "audio does not depend on the codes"
    assert gen.codec.encode(noise_audio(4, seed=1)).any(), "audio encodes to all-zero (EOS) frames"
