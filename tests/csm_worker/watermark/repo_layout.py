"""A folder laid out file for file as the real hub repo `sony/silentcipher` is, with seeded random weights.

The real repo (never downloadable here) holds, per its model card and file listing:
    config.json                                 a dummy ({"Note": "Dummy file to track download counts"})
    README.md
    44_1_khz/73999_iteration/hparams.yaml       the 44.1 kHz model's settings (what the reference uses)
    44_1_khz/73999_iteration/enc_c.ckpt         184,765 bytes: the encoder's state dict, torch.save'd
    44_1_khz/73999_iteration/dec_c.ckpt         2,008,794 bytes: the carrier decoder's
    44_1_khz/73999_iteration/dec_m_0.ckpt       9,554,818 bytes: the message decoder's (detection only)
    44_1_khz/73999_iteration/opt.ckpt           23,448,174 bytes: the optimizer's state, not needed to mark
    16_khz/97561_iteration/...                  the 16 kHz model, same files: not used (it cannot hold 5 bytes)
Here the 44.1 kHz networks are csm_worker's random weights; opt.ckpt and the 16 kHz files are small decoys.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from csm_worker.watermark.weights import CHECKPOINT, write_random_weights

REAL_SIZES = {"enc_c.ckpt": 184_765, "dec_c.ckpt": 2_008_794, "dec_m_0.ckpt": 9_554_818}
DECOYS = ("44_1_khz/73999_iteration/opt.ckpt", "16_khz/97561_iteration/hparams.yaml",
          "16_khz/97561_iteration/enc_c.ckpt", "16_khz/97561_iteration/dec_c.ckpt",
          "16_khz/97561_iteration/dec_m_0.ckpt", "16_khz/97561_iteration/opt.ckpt")


def write_silentcipher_repo(dest: Path) -> Path:
    staging = write_random_weights(dest.parent / f".{dest.name}-weights")
    shutil.copytree(staging / CHECKPOINT, dest / CHECKPOINT)
    shutil.rmtree(staging)
    (dest / "config.json").write_text(json.dumps({"Note": "Dummy file to track download counts"}))
    (dest / "README.md").write_text("# SilentCipher (a test copy of the repo's layout)\n")
    for name in DECOYS:
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        (dest / name).write_bytes(b"decoy: must never be downloaded or loaded")
    return dest
