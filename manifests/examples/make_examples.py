"""Regenerate the example manifests in this folder: python manifests/examples/make_examples.py

dialogue.parquet       3 conversations, 2 speakers, every turn rendered; sampling settings on some rows.
voice_prompt.parquet   1 conversation whose turn 0 is given: voices/speaker0.wav sets speaker 0's voice.
voices/speaker0.wav    2 s of 24 kHz mono PCM_16, a chord of sine tones (a stand-in for a real recording).
voices/speaker1.wav    the same for speaker 1, other tones.
../casts/narrator_and_guest.parquet   a cast for `--voices` (outside this folder, which `run` reads whole):
                       speaker 0 "Narrator" (voices/speaker0.wav), speaker 1 "Guest" (voices/speaker1.wav).
"""
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile

HERE = Path(__file__).resolve().parent
SAMPLE_RATE = 24_000

# Explicit types: pandas would make the optional integer columns float (because of the nulls), a type error.
SCHEMA = pa.schema([
    ("conversation_id", pa.string()),
    ("turn_index", pa.int32()),
    ("speaker", pa.int32()),
    ("text", pa.string()),
    ("audio", pa.string()),
    ("temperature", pa.float64()),
    ("top_k", pa.int32()),
    ("max_audio_length_ms", pa.int32()),
    ("seed", pa.int64()),
    ("pause_ms", pa.int32()),
])

DIALOGUE = [
    # conversation_id, turn_index, speaker, text, settings
    ("kitchen", 0, 0, "Did you remember to buy the bread?", {}),
    ("kitchen", 1, 1, "I did, and I also picked up some cheese.", {"temperature": 0.7, "top_k": 40}),
    ("kitchen", 2, 0, "Perfect. Then lunch is sorted.", {"pause_ms": 600}),
    ("station", 0, 1, "Excuse me, is this the train to the coast?", {"seed": 1234}),
    ("station", 1, 0, "It is. It leaves in five minutes from platform two.", {"max_audio_length_ms": 6000}),
    ("station", 2, 1, "Thank you so much!", {"pause_ms": 250}),
    ("station", 3, 0, "Have a good trip.", {}),
    ("weather", 0, 0, "Looks like rain again this afternoon.", {"temperature": 0.9}),
    ("weather", 1, 1, "Good thing I brought an umbrella.", {"seed": 7, "pause_ms": 400}),
]

VOICE_PROMPT = [
    ("greeting", 0, 0, "Hello there, this is how I sound.", {"audio": "voices/speaker0.wav"}),
    ("greeting", 1, 1, "Nice to meet you. How was the drive?", {}),
    ("greeting", 2, 0, "Long, but the views made up for it.", {"pause_ms": 500}),
]


def table(rows) -> pa.Table:
    columns = {name: [] for name in SCHEMA.names}
    for conversation_id, turn_index, speaker, text, settings in rows:
        row = {"conversation_id": conversation_id, "turn_index": turn_index, "speaker": speaker, "text": text}
        for name in SCHEMA.names:
            columns[name].append(row.get(name, settings.get(name)))
    return pa.table(columns, schema=SCHEMA)


CAST = [  # speaker, name, transcript, recording (relative to the cast file)
    (0, "Narrator", "Hello there, this is how I sound.", "../examples/voices/speaker0.wav"),
    (1, "Guest", "And this is my voice, a little higher.", "../examples/voices/speaker1.wav"),
]


def write_voice(path: Path, seconds: float = 2.0, tones=(140.0, 280.0, 420.0, 700.0)) -> None:
    t = np.arange(int(SAMPLE_RATE * seconds)) / SAMPLE_RATE
    chord = sum(np.sin(2 * np.pi * f * t) / (i + 1) for i, f in enumerate(tones))
    fade = np.minimum(1.0, np.minimum(t, seconds - t) / 0.05)  # no clicks at the ends
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, 0.3 * fade * chord / np.abs(chord).max(), SAMPLE_RATE, subtype="PCM_16")


def main() -> None:
    pq.write_table(table(DIALOGUE), HERE / "dialogue.parquet")
    pq.write_table(table(VOICE_PROMPT), HERE / "voice_prompt.parquet")
    write_voice(HERE / "voices" / "speaker0.wav")
    write_voice(HERE / "voices" / "speaker1.wav", tones=(220.0, 440.0, 660.0, 990.0))
    (HERE.parent / "casts").mkdir(exist_ok=True)
    pq.write_table(pa.table({"speaker": pa.array([c[0] for c in CAST], pa.int32()), "name": [c[1] for c in CAST],
                             "text": [c[2] for c in CAST], "audio": [c[3] for c in CAST]}),
                   HERE.parent / "casts" / "narrator_and_guest.parquet")


if __name__ == "__main__":
    main()
