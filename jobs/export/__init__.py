"""`csm-render export`: finished deliverables derived from a job's OUT (read only), written under OUT/exports/.

- reader.py: a job's complete conversations from OUT, one at a time; what is skipped and why
- given.py: given (voice-prompt) turns from the manifest, for --include-given (OUT does not hold them)
- timeline.py: where each turn and pause lands in a conversation's stitched file
- stitch.py, loudness.py, encode.py: one audio file per conversation
- captions.py: SRT, WebVTT and a JSON timeline per conversation
- hf_dataset.py, webdataset_shards.py, shards.py: datasets in size-bounded shards
- per_conversation.py: the conversations and captions kinds, each with a record written last
- options.py, destination.py: what was asked and where it goes (bad requests refused before any write)
- command.py: one export pass; live.py: exporting while `csm-render run --export` renders
"""
