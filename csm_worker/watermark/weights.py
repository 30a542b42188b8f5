"""Where the watermark's weights come from: the published checkpoint on the hub (`sony/silentcipher`, its 44.1 kHz
model, downloaded once per node into the hub cache), a local folder in that repo's layout, or `random:silentcipher`
(seeded random weights in the same layout and shapes, built once into the cache, for the `random:*` CSM presets).
All three load through `load_watermarker`, the code that loads the real one."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from ..cache import cache_root
from ..errors import BadCheckpoint, ModelLoadError
from ..model.sources import looks_like_path, meant_as_folder
from .hparams import REFERENCE, Hparams, read_hparams

HUB_REPO = "sony/silentcipher"
RANDOM_WEIGHTS = "random:silentcipher"
CHECKPOINT = "44_1_khz/73999_iteration"  # the 44.1 kHz model Sesame's reference uses, inside the repo
NETWORKS = ("enc_c", "dec_c", "dec_m_0")  # encoder, carrier decoder, message decoder (opt.ckpt is not needed)
FILES = ("hparams.yaml", *(f"{n}.ckpt" for n in NETWORKS))
RANDOM_SEED = 1234
RANDOM_VERSION = 1  # bump when the random weights' recipe changes, so old caches are not reused


def default_weights(model: str) -> str:
    """The watermark a CSM model gets unless told otherwise: random weights for a random preset (so an offline job
    runs the whole path), the published checkpoint for real weights."""
    return RANDOM_WEIGHTS if model.startswith("random:") else HUB_REPO


def checkpoint_dir(source: str, revision: str | None = None) -> Path:
    """The folder holding hparams.yaml and the .ckpt files. A local folder may be the repo's root (with
    44_1_khz/73999_iteration/ inside) or that folder itself."""
    if source == RANDOM_WEIGHTS:
        return random_weights_dir() / CHECKPOINT
    folder = Path(source).expanduser()
    if folder.is_dir():
        inner = folder / CHECKPOINT
        return _complete(inner if inner.is_dir() else folder, source)
    if looks_like_path(source):
        raise ModelLoadError(f"watermark weights {source}: no such folder")
    from ..model.loading import hub_snapshot

    try:
        return _complete(hub_snapshot(source, revision, [f"{CHECKPOINT}/{f}" for f in FILES]) / CHECKPOINT, source)
    except ModelLoadError as e:
        raise ModelLoadError(f"watermark weights {source}: {e}; or give --watermark-weights a local copy of "
                             f"{HUB_REPO} (`hf download {HUB_REPO} --include '{CHECKPOINT}/*'`)") from e


def check_local_source(source: str) -> None:
    """Before any work: a local folder (or what looks like one) must be there in the repo's layout. Hub ids and
    s3:// prefixes are fetched by the workers, which stop the job when the files are not silentcipher's."""
    if source != RANDOM_WEIGHTS and meant_as_folder(source):
        checkpoint_dir(source)


def _complete(folder: Path, source: str) -> Path:
    missing = [f for f in FILES if not (folder / f).is_file()]
    if missing:
        raise BadCheckpoint(f"watermark weights {source}: {folder} lacks {', '.join(missing)}; expected the layout "
                            f"of {HUB_REPO} ({CHECKPOINT}/{{{','.join(FILES)}}})")
    return folder.resolve()


def weights_id(folder: Path) -> str:
    """The sha256 of the loaded files (12 MB in all), so the job record names exactly the weights that marked it."""
    h = hashlib.sha256()
    for name in FILES:
        h.update(name.encode() + (folder / name).read_bytes())
    return h.hexdigest()


def build_networks(h: Hparams):
    from .nets import CarrierDecoder, Encoder, MsgDecoder

    return (Encoder(h.enc_n_layers, h.message_dim, h.message_band_size, h.N_FFT),
            CarrierDecoder(h.dec_c_n_layers, h.message_band_size),
            MsgDecoder(h.message_dim, h.message_band_size))


def load_watermarker(source: str, device: str = "cpu", revision: str | None = None, max_frames: int = 1024,
                     label: str | None = None):
    """A Watermarker on `device` with the weights of `source` (BadCheckpoint when the files are not silentcipher's
    44.1 kHz networks; ModelLoadError when they cannot be had). `label`: what its `source` says (default
    `source`; an s3:// prefix's local copy is named by the prefix it came from)."""
    import torch

    from .marker import Watermarker

    folder = checkpoint_dir(source, revision)
    h = read_hparams(folder / "hparams.yaml")
    networks = build_networks(h)
    for name, net in zip(NETWORKS, networks):
        path = folder / f"{name}.ckpt"
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            # Checkpoints saved from a DataParallel model name every tensor "module.<name>".
            net.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
        except Exception as e:  # torch raises many kinds for a file that is no checkpoint or the wrong one
            raise BadCheckpoint(f"watermark weights {source}: {path} is not silentcipher's {name} network: "
                                f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
    return Watermarker(h, *networks, device=device, source=label or source, weights_id=weights_id(folder),
                       max_frames=max_frames)


def random_weights_dir() -> Path:
    """`random:silentcipher`: the hub repo's layout with seeded random weights, built on first use (atomically)."""
    final = cache_root() / "presets" / f"silentcipher-random-v{RANDOM_VERSION}"
    if (final / CHECKPOINT / FILES[-1]).exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tmp-silentcipher-", dir=final.parent))
    try:
        write_random_weights(staging)
        try:
            os.replace(staging, final)
        except OSError:  # another process built it first: keep theirs
            if not (final / CHECKPOINT / FILES[-1]).exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def write_random_weights(root: Path, seed: int = RANDOM_SEED) -> Path:
    """Seeded random networks of the published checkpoint's shapes, saved as it is saved (a state dict per
    network, torch.save'd to <name>.ckpt, beside hparams.yaml); batch norm's affine parameters are random too,
    so no layer is an identity."""
    import torch
    import yaml

    folder = root / CHECKPOINT
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "hparams.yaml").write_text(yaml.safe_dump(REFERENCE))
    (root / "config.json").write_text('{"Note": "random weights in the layout of sony/silentcipher"}\n')
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name, net in zip(NETWORKS, build_networks(Hparams(**REFERENCE))):
            for module in net.modules():
                if isinstance(module, torch.nn.BatchNorm2d):
                    torch.nn.init.uniform_(module.weight, 0.5, 1.5)
                    torch.nn.init.uniform_(module.bias, -0.1, 0.1)
            torch.save(net.state_dict(), folder / f"{name}.ckpt")
    return root
