"""Prompt layout helpers: text positions counted one by one and in batches agree."""

from csm_worker.model.prompt import TextEncoder


def test_batched_position_counts_equal_single_counts(gen):
    encoder = TextEncoder(gen.loaded.tokenizer)
    speakers = [0, 1, 12, 3]
    texts = ["hello", "wörld, ok — 😀", "", "[1] brackets inside"]
    single = [encoder.positions(s, t) for s, t in zip(speakers, texts)]
    assert encoder.positions_many(speakers, texts) == single
    assert single == [len(encoder.encode(s, t)) for s, t in zip(speakers, texts)]
    counter = encoder.counter()
    assert counter(1, "abc") == encoder.positions(1, "abc")
    assert counter.many(speakers, texts) == single


def test_encode_wraps_speaker_and_text_between_bos_and_eos(gen):
    encoder = TextEncoder(gen.loaded.tokenizer)
    ids = encoder.encode(2, "hi")
    assert ids[0] == encoder.bos and ids[-1] == encoder.eos
    assert gen.loaded.tokenizer.decode(ids[1:-1]) == "[2]hi"
