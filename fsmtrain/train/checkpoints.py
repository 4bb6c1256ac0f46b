"""Checkpoint files: written atomically, named by content, verified before loading, never code.

A checkpoint is one ``torch.save`` file holding the model, optimizer and LR
scheduler state, the RNG states (torch CPU and CUDA, Python ``random``, NumPy
when installed) and the loop position.  :func:`save_checkpoint` serialises it
straight into a temp file while hashing it (one pass, no copy in memory), fsyncs,
renames it into place and fsyncs the folder, and only then returns the
:class:`~fsmtrain.Ref` that a step commits: a committed Ref always names a
complete file (asynchronous saves: :mod:`fsmtrain.train.saver`).  :func:`load_checkpoint`
checks size and sha256 before ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import ctypes
import hashlib
import io
import os
import random
import shutil
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from ..log.home import MANIFEST, is_manifest
from ..state import Ref
from .saver import fsync_dir, save_streaming

__all__ = ["FORMAT", "capture_rng", "load_checkpoint", "read_verified", "remove", "restore_rng", "save_checkpoint",
           "seed_everything", "sweep", "unnamed", "weights_sha256", "write_artifact"]

FORMAT = 1


def weights_sha256(model: torch.nn.Module | Mapping[str, torch.Tensor]) -> str:
    """sha256 of a model's ``state_dict`` tensors' bytes, in ``state_dict`` order."""
    sd = model.state_dict() if isinstance(model, torch.nn.Module) else model
    h = hashlib.sha256()
    for t in sd.values():
        flat = t.detach().to("cpu").contiguous()
        # The tensor's own bytes, read in one call (no NumPy needed; `flat` stays alive meanwhile).
        h.update(ctypes.string_at(flat.data_ptr(), flat.numel() * flat.element_size()))
    return h.hexdigest()


def seed_everything(seed: int) -> None:
    """Seed Python ``random``, torch (CPU and CUDA) and NumPy when it is installed."""
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np
    except ImportError:
        return
    np.random.seed(seed % 2**32)


def capture_rng() -> dict[str, Any]:
    """Every global RNG state a training step may consume, as plain data."""
    version, internal, gauss = random.getstate()
    # As a tensor, not a list of 625 ints: the weights-only unpickler reads each list item in Python.
    rng: dict[str, Any] = {"python": [version, torch.tensor(internal, dtype=torch.int64), gauss],
                           "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        rng["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np
    except ImportError:
        return rng
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    rng["numpy"] = [kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(cached)]
    return rng


def restore_rng(rng: Mapping[str, Any]) -> None:
    """Set the global RNGs to a state from :func:`capture_rng`."""
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal.tolist()), gauss))
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    if "numpy" in rng:
        try:
            import numpy as np
        except ImportError:
            return  # saved where NumPy was installed; nothing here consumes it
        kind, keys, pos, has_gauss, cached = rng["numpy"]
        np.random.set_state((kind, keys.numpy().astype("uint32"), pos, has_gauss, cached))


def write_artifact(root: Path, relpath: str, data: bytes) -> Ref:
    """Write ``data`` to ``root/relpath`` atomically and durably; return its Ref.

    Temp file in the same folder, fsync, rename over the target, fsync the
    folder: a reader sees the old file or the complete new one, never a part.
    """
    ref = Ref(relpath, hashlib.sha256(data).hexdigest(), len(data))
    target = root / relpath
    if not target.parent.is_dir():
        target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)
    return ref


def save_checkpoint(root: Path, folder: str, stem: str, payload: Mapping[str, Any]) -> Ref:
    """``torch.save`` ``payload`` as ``root/folder/<stem>-<sha256[:12]>.pt``, atomically; return its Ref.

    The name carries the content hash, so a file is never overwritten with
    different bytes: a Ref committed earlier keeps pointing at what it hashed.
    """
    return save_streaming(root, folder, stem, payload)


def read_verified(root: Path, ref: Ref) -> bytes:
    """The bytes of ``ref``'s file, or :class:`CheckpointError` if it is missing, truncated or altered."""
    path = root / ref.path
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {ref.path} is missing (looked in {root})") from None
    except OSError as e:
        raise CheckpointError(f"checkpoint {ref.path} cannot be read: {e}") from None
    if len(data) != ref.size:
        raise CheckpointError(f"checkpoint {ref.path} has {len(data)} bytes, but {ref.size} were recorded "
                              "(truncated or replaced)")
    digest = hashlib.sha256(data).hexdigest()
    if digest != ref.sha256:
        raise CheckpointError(f"checkpoint {ref.path} does not match its recorded sha256 "
                              f"({digest[:12]}… != {ref.sha256[:12]}…): the file was altered")
    return data


def load_checkpoint(root: Path, ref: Ref, *, map_location: Any = None) -> dict[str, Any]:
    """Verify, then load with ``weights_only=True``: a checkpoint is data, never code."""
    data = read_verified(root, ref)
    try:
        payload = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {ref.path} is not a plain-data checkpoint; refused to load it "
                              f"(torch.load with weights_only=True: {first})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {ref.path} is not an fsmtrain checkpoint (format {FORMAT})")
    return payload


def unnamed(root: Path, folder: str, keep: Iterable[Ref], spare: Callable[[str], bool] | None = None) -> list[str]:
    """The checkpoint files (and temp files of killed writes) in ``root/folder`` that no Ref in ``keep``
    names, as paths relative to ``root``; less those ``spare(path)`` keeps (an asynchronous save's)."""
    base = root / folder
    if not base.is_dir():
        return []
    keep = list(keep)
    kept = {Path(r.path).name for r in keep if Path(r.path).parent == Path(folder)}
    kept_dirs = {Path(r.path).parent.name for r in keep if Path(r.path).parent.parent == Path(folder)}
    found = []
    for p in sorted(base.iterdir()):
        if p.is_dir() and p.name not in kept_dirs and (p.suffix == ".dcp" or p.name.endswith(".dcp.tmp")):
            # a sharded checkpoint (named by its manifest, as its Ref names it) or one killed while being written
            found.append(f"{folder}/{p.name}/{MANIFEST}" if p.suffix == ".dcp" else f"{folder}/{p.name}")
        elif p.is_file() and p.name not in kept and (p.suffix == ".pt" or p.name.endswith(".tmp")):
            found.append(f"{folder}/{p.name}")
    return [f for f in found if not spare(f)] if spare is not None else found


def remove(root: Path, relpath: str) -> None:
    """Delete a checkpoint file, or a sharded checkpoint (its manifest's path: the manifest first, so that a
    deletion cut short never leaves a folder that looks complete; or a killed save's temp folder)."""
    path = root / relpath
    if is_manifest(relpath):
        path.unlink(missing_ok=True)
        shutil.rmtree(path.parent, ignore_errors=True)
    elif path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def sweep(root: Path, folder: str, keep: Iterable[Ref], spare: Callable[[str], bool] | None = None) -> list[str]:
    """Delete files in ``root/folder`` that no Ref in ``keep`` names; return what was deleted.

    Call it only with the Refs of *committed* state, after the commit — and, for a log that
    may lose its last commits on a power loss, once that commit is behind a barrier.
    """
    deleted = unnamed(root, folder, keep, spare)
    for rel in deleted:
        remove(root, rel)
    return deleted
