import io

import numpy as np
import pytest
import soundfile as sf

from csm_worker.audio import (
    SAMPLE_RATE,
    AudioError,
    audio_extension,
    audio_sha256,
    content_hash,
    encode_audio,
    load_audio,
    probe_audio,
    to_mono_24k,
)

FILE_FORMATS = {"wav": ("WAV", "PCM_16"), "flac": ("FLAC", "PCM_16"), "ogg": ("OGG", "VORBIS")}


def sine(freq, rate, seconds=1.0, amp=0.5):
    t = np.arange(int(rate * seconds)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(samples, rate):
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return np.fft.rfftfreq(len(samples), 1 / rate)[np.argmax(spectrum)]


def write(path, samples, rate, ext):
    fmt, subtype = FILE_FORMATS[ext]
    sf.write(path, samples, rate, format=fmt, subtype=subtype)
    return path


@pytest.mark.parametrize("ext", sorted(FILE_FORMATS))
@pytest.mark.parametrize("rate", [16_000, 44_100, 48_000])
def test_load_resamples_to_24k_mono_keeping_pitch(tmp_path, ext, rate):
    tone = sine(1000, rate)
    stereo = np.stack([tone, tone], axis=1)
    path = write(tmp_path / f"tone.{ext}", stereo, rate, ext)

    out = load_audio(path)

    assert out.dtype == np.float32 and out.ndim == 1
    assert abs(len(out) - len(tone) * SAMPLE_RATE / rate) <= 1
    assert abs(peak_hz(out, SAMPLE_RATE) - 1000) <= 2
    assert 0.3 < np.abs(out).max() < 0.6  # level kept (amplitude 0.5 in both channels)


def test_stereo_is_averaged_to_mono(tmp_path):
    left = np.full(2400, 0.5, dtype=np.float32)
    right = np.full(2400, 0.1, dtype=np.float32)
    path = tmp_path / "lr.wav"
    sf.write(path, np.stack([left, right], axis=1), SAMPLE_RATE, subtype="FLOAT")

    np.testing.assert_allclose(load_audio(path), 0.3, atol=1e-6)


def test_load_accepts_bytes_stream_and_str_path(tmp_path):
    tone = sine(440, 16_000, seconds=0.5)
    path = write(tmp_path / "t.flac", tone, 16_000, "flac")
    data = path.read_bytes()

    from_path = load_audio(str(path))
    np.testing.assert_array_equal(load_audio(data), from_path)
    np.testing.assert_array_equal(load_audio(io.BytesIO(data)), from_path)
    assert len(from_path) == 12_000


def test_load_to_other_target_rate(tmp_path):
    path = write(tmp_path / "t.wav", sine(440, 48_000), 48_000, "wav")
    assert len(load_audio(path, target_rate=16_000)) == 16_000


def test_undecodable_file_names_the_source(tmp_path):
    bad = tmp_path / "not_audio.wav"
    bad.write_bytes(b"this is not a wav file at all")
    with pytest.raises(AudioError, match="not_audio.wav"):
        load_audio(bad)
    with pytest.raises(AudioError, match="not_audio.wav"):
        probe_audio(bad)
    with pytest.raises(AudioError, match="voice.wav"):
        load_audio(b"garbage bytes", name="voice.wav")
    assert issubclass(AudioError, ValueError)


def test_missing_and_empty_files_raise_audio_error(tmp_path):
    with pytest.raises(AudioError, match="missing.wav"):
        load_audio(tmp_path / "missing.wav")
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, dtype=np.float32), 16_000)
    with pytest.raises(AudioError, match="empty"):
        load_audio(empty)


def test_non_finite_samples_rejected(tmp_path):
    path = tmp_path / "nan.wav"
    sf.write(path, np.array([0.0, np.nan, 0.1], dtype=np.float32), SAMPLE_RATE, subtype="FLOAT")
    with pytest.raises(AudioError, match="NaN"):
        load_audio(path)
    with pytest.raises(AudioError, match="NaN"):
        encode_audio(np.array([np.inf], dtype=np.float32))


def test_probe_audio_reads_header(tmp_path):
    path = tmp_path / "s.flac"
    sf.write(path, np.zeros((1234, 2), dtype=np.float32), 44_100, subtype="PCM_16")
    assert probe_audio(path) == (44_100, 2, 1234)


def test_to_mono_24k_arrays_and_channels():
    tone = sine(1000, 48_000)
    out = to_mono_24k(np.stack([tone, tone], axis=1), 48_000)
    assert out.ndim == 1 and abs(len(out) - 24_000) <= 1
    assert abs(peak_hz(out, SAMPLE_RATE) - 1000) <= 2

    same = to_mono_24k(tone[:24_000].astype(np.float64), SAMPLE_RATE)
    assert same.dtype == np.float32
    np.testing.assert_array_equal(same, tone[:24_000])
    with pytest.raises(AudioError, match="shape"):
        to_mono_24k(np.zeros((2, 3, 4)), SAMPLE_RATE)


def test_downsampling_filters_instead_of_aliasing():
    # 13 kHz is above the 12 kHz Nyquist of 24 kHz: a proper resampler removes it, a cheap one folds it to 11 kHz.
    out = to_mono_24k(sine(13_000, 48_000, amp=0.5), 48_000)
    assert np.sqrt(np.mean(out[1000:-1000] ** 2)) < 1e-3


def test_integer_pcm_is_scaled():
    pcm = np.array([0, 16384, -32768], dtype=np.int16)
    np.testing.assert_allclose(to_mono_24k(pcm, SAMPLE_RATE), [0.0, 0.5, -1.0])


def test_torch_tensors_accepted():
    torch = pytest.importorskip("torch")
    tone = sine(440, SAMPLE_RATE, seconds=0.1)
    tensor = torch.from_numpy(tone).to(torch.bfloat16).reshape(1, 1, -1)  # codec output shape, bf16

    as_float = tensor.float().reshape(-1).numpy()
    np.testing.assert_array_equal(to_mono_24k(tensor.reshape(-1), SAMPLE_RATE), as_float)
    assert content_hash(tensor) == content_hash(as_float)
    decoded, _ = sf.read(io.BytesIO(encode_audio(tensor)), dtype="float32")
    assert np.abs(decoded - as_float).max() < 1e-4


@pytest.mark.parametrize("fmt", ["wav", "flac"])
def test_encode_round_trip_pcm16(fmt):
    tone = sine(440, SAMPLE_RATE, amp=0.9)
    data = encode_audio(tone, fmt)

    decoded, rate = sf.read(io.BytesIO(data), dtype="float32")
    info = sf.info(io.BytesIO(data))
    assert (rate, info.format, info.subtype, info.channels) == (SAMPLE_RATE, fmt.upper(), "PCM_16", 1)
    assert decoded.shape == tone.shape
    assert np.abs(decoded - tone).max() < 1e-4


def test_encode_other_rate_and_empty():
    assert sf.info(io.BytesIO(encode_audio(np.zeros(100), sample_rate=16_000))).samplerate == 16_000
    decoded, _ = sf.read(io.BytesIO(encode_audio(np.zeros(0, dtype=np.float32))))
    assert len(decoded) == 0


def test_encode_clips_out_of_range_values():
    loud = np.array([2.0, -3.0, 1.0, -1.0, 0.25], dtype=np.float32)
    decoded, _ = sf.read(io.BytesIO(encode_audio(loud)), dtype="int16")
    # Without clipping, 2.0 * 32767 would wrap around to a negative int16.
    np.testing.assert_array_equal(decoded, [32767, -32767, 32767, -32767, 8192])


def test_unknown_format_rejected():
    with pytest.raises(ValueError, match="flac, wav"):
        encode_audio(np.zeros(10), "mp3")
    with pytest.raises(ValueError, match="flac, wav"):
        audio_extension("ogg")
    assert audio_extension("wav") == ".wav"
    assert audio_extension("FLAC") == ".flac"


def test_audio_sha256_of_bytes():
    data = encode_audio(sine(440, SAMPLE_RATE, seconds=0.1))
    assert audio_sha256(data) == audio_sha256(bytes(data))
    assert audio_sha256(data) != audio_sha256(data[:-2] + b"\x00\x01")
    assert len(audio_sha256(b"")) == 64


def test_content_hash_stable_and_sensitive():
    tone = sine(440, SAMPLE_RATE, seconds=0.1)
    assert content_hash(tone) == content_hash(tone.copy())
    assert content_hash(tone) == content_hash(tone.astype(np.float64))  # hashed as float32
    changed = tone.copy()
    changed[123] += 1e-3
    assert content_hash(changed) != content_hash(tone)
    # Known value pins the byte layout (float32 little-endian), so cache keys survive refactors.
    assert content_hash(np.array([1.0], dtype=np.float32)) == audio_sha256(b"\x00\x00\x80\x3f")
