"""Sharded checkpoints for models sharded with FSDP2 (``torch.distributed.fsdp.fully_shard``).

In a distributed run whose model is an ``FSDPModule``, every rank holds only its shards of the parameters and of
the optimizer's state, so no rank can write the whole checkpoint.  A *sharded checkpoint* is a folder::

    run<ID>/<stem>-<sha256[:12]>.dcp/
        .metadata  __0_0.distcp  __1_0.distcp ...   # torch.distributed.checkpoint (DCP): each rank its shards
        rank0.pt  rank1.pt ...                      # each rank's own: RNGs, buffers, LR scheduler, scaler, loader
        manifest.json                               # the format, the world size, every file's size and sha256

Each rank writes its shards (``dcp.save`` over a gloo group of its own, never the training's collectives), the
files are fsynced, the ranks hash them (each a share), and the log's rank renames the folder to its name with the
manifest's hash and writes the manifest into it; only then is the Ref to ``manifest.json`` committed: a committed Ref
always names a complete checkpoint whose every byte is hashed (spec/training.md §3c).  The folder must be on a
filesystem every rank sees (one node, or a shared mount); a save where a rank cannot see the others' files fails
with a :class:`~fsmtrain.errors.CheckpointError`, and nothing is committed.

A restore verifies the manifest and every file before any rank reads one; every rank then loads its own shards
(``dcp.load``).  At the world size of the save the resume is bit-identical; at another, DCP reshards the
parameters and optimizer state, each rank takes rank 0's RNG state, and the restore's note says it is not
bit-identical.  One process (``Trainer.load``, an export, a resume without ``distributed``) loads the whole
state from the shards.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from ..log.home import MANIFEST, is_manifest
from ..state import Ref
from .checkpoints import FORMAT, write_artifact
from .saver import _trace, fsync_dir

__all__ = ["MANIFEST", "even_out", "finish", "full_model_state", "full_weights", "is_sharded", "is_sharded_ref",
           "load_full", "load_own", "load_sharded", "local_buffers", "own_bytes", "prepare", "save_sharded", "shard_model",
           "sharding_problem", "state_dicts", "verify_sharded"]

KIND = "fsmtrain-sharded-checkpoint"


def is_sharded(model: Any) -> bool:
    """Whether ``model`` is sharded with FSDP2 (``fully_shard`` applied to it)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # (a torch without FSDP2)
        return False
    return isinstance(model, FSDPModule)


def sharding_problem(model: Any, distributed: bool) -> str | None:
    """Why ``model``'s sharding cannot be trained here, or None: FSDP2 needs ``Trainer(distributed=True)``, and
    ``fully_shard`` applied to the model itself (submodules alone would be wrapped in DDP, which cannot hold them)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:
        return None
    if not any(isinstance(m, FSDPModule) for m in model.modules()):
        return None
    if not isinstance(model, FSDPModule):
        return ("the model has submodules sharded with fully_shard, but not the model itself: apply fully_shard to "
                "the model too, after its submodules (or use fsmtrain.train.shard_model)")
    if not distributed:
        return "the model is sharded with FSDP2: train it with Trainer(..., distributed=True), started by torchrun"
    return None


def is_sharded_ref(ref: Ref) -> bool:
    """Whether ``ref`` names a sharded checkpoint (its manifest) rather than one checkpoint file."""
    return is_manifest(ref.path)


def shard_model(model: torch.nn.Module, *, units: tuple[type, ...] = (torch.nn.Linear, torch.nn.Embedding),
                mesh: Any = None) -> torch.nn.Module:
    """``model`` sharded with FSDP2 over every rank of the process group: ``fully_shard`` on each submodule of a
    type in ``units`` (its own all-gather, so that only one unit's full parameters exist at a time) whose
    parameters no module outside it shares (tied weights stay in the model's own unit), then on the model.  Call it
    in the resource factory, before creating the optimizer (which must see the sharded parameters); ``mesh``
    defaults to a 1-D mesh over all ranks (CUDA with nccl, else the CPU)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    if not dist.is_initialized():
        raise CheckpointError("shard_model needs the process group: build the resources under "
                              "Trainer(..., distributed=True), started by torchrun")
    if mesh is None:
        kind = "cuda" if dist.get_backend() == "nccl" else "cpu"
        mesh = init_device_mesh(kind, (dist.get_world_size(),))
    owners: dict[int, set[str]] = {}  # each parameter's modules (several where weights are tied)
    for name, module in model.named_modules():
        for param in module.parameters(recurse=False):
            owners.setdefault(id(param), set()).add(name)
    chosen = [module for name, module in list(model.named_modules())[1:] if any(isinstance(module, u) for u in units)
              and all(o == name or o.startswith(f"{name}.") for p in module.parameters() for o in owners[id(p)])]
    for module in reversed(chosen):  # (decided before any is sharded, which replaces parameters; inner units first)
        fully_shard(module, mesh=mesh)  # (a unit tied to a module outside it stays with the model's own unit)
    fully_shard(model, mesh=mesh)
    return model


def full_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The sharded ``model``'s full parameters and buffers, on every rank (a collective: every rank calls it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return dict(get_model_state_dict(model, options=StateDictOptions(full_state_dict=True)))  # type: ignore[arg-type]


def even_out(r: Any, ran: int, sample: Any) -> None:
    """Run the sharded model forward until this rank has run as many forwards as the rank that ran most (``ran``:
    this rank's count; ``sample``: inputs of one of its batches, or None): each forward of an FSDP model
    all-gathers parameters with every rank, so a rank with one batch fewer would leave the others waiting."""
    from .resources import batches

    most = max(row[0] for row in r.dist.all_gather_ints([ran]))
    if most <= ran:
        return
    if sample is None:  # (this rank's share was empty; another's was not, so val_data has a first sample)
        *sample, _ = next(iter(batches(r.val_data, 1, device=r.device, collate_fn=r.collate_fn)))
    with torch.no_grad(), r.autocast():
        for _ in range(most - ran):
            r.model(*sample)  # (its outputs are not counted)


def _sha256_file(path: Path) -> tuple[str, int]:
    h, n = hashlib.sha256(), 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
            n += len(block)
    return h.hexdigest(), n


def save_sharded(r: Any, root: Path, folder: str, stem: str, own: Mapping[str, Any]) -> Ref:
    """Save the sharded model and optimizer of resources ``r`` as ``root/folder/<stem>-<sha12>.dcp/`` with each
    rank's ``own`` state (plain data: RNGs, scheduler...); every rank calls it and gets the committed Ref."""
    from torch.distributed.checkpoint.state_dict_saver import save as dcp_save

    tmp = prepare(r.dist, root, folder, stem)
    state, aliases = state_dicts(r)
    with _dcp(f"saving sharded checkpoint {folder}/{stem} failed"):
        meta = dcp_save(state, storage_writer=_writer(tmp, f"{folder}/{stem}"), process_group=r.dist.save_group())
    return finish(r.dist, root, folder, stem, tmp, meta, own_bytes(own), own.get("epoch"), aliases)


def state_dicts(r: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """What DCP saves of resources ``r`` — the model's and the optimizer's state dicts (sharded: each rank its
    own), each tensor once — and the model's tied entries left out (``{name: the entry it is}``)."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(r.model, r.optimizer)
    aliases = _tied(r.model, model_sd)
    for name in aliases:
        del model_sd[name]
    return {"model": model_sd, "optimizer": optim_sd}, aliases


def _tied(model: torch.nn.Module, state: Mapping[str, Any]) -> dict[str, str]:
    """The entries of ``state`` (the model's state dict) that are another entry's parameter or buffer (tied
    weights: an output layer sharing the embedding), as ``{name: the first name}``; found from the module's own
    registrations, so every rank finds the same, whatever its shards."""
    first: dict[int, str] = {}
    out: dict[str, str] = {}
    for name, t in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
        if name not in state:
            continue
        if id(t) in first:
            out[name] = first[id(t)]
        else:
            first[id(t)] = name
    return out


def _untie(model_sd: dict[str, Any], aliases: Mapping[str, str]) -> None:
    for name, same in aliases.items():
        if same in model_sd:
            model_sd[name] = model_sd[same]


def own_bytes(own: Mapping[str, Any]) -> bytes:
    buf = io.BytesIO()
    torch.save({"format": FORMAT, **own}, buf)
    return buf.getvalue()


def prepare(d: Any, root: Path, folder: str, stem: str) -> Path:
    """The save's temp folder, made empty by the log's rank (every rank calls it: a collective)."""
    tmp = root / folder / f".{stem}.dcp.tmp"  # (the same name for the same step: a redone save writes the same bytes)
    problem = None
    if d.writer:
        try:
            if tmp.exists():
                shutil.rmtree(tmp)  # a save killed before its rename
            tmp.mkdir(parents=True)
        except OSError as e:
            problem = f"cannot create {tmp}: {e}"
    problem = d.agree(problem)
    if problem:
        raise CheckpointError(problem)
    return tmp


def finish(d: Any, root: Path, folder: str, stem: str, tmp: Path, meta: Any, own: bytes, epoch: Any,
           aliases: Mapping[str, str]) -> Ref:
    """After DCP wrote the shards into ``tmp`` (``meta``: what ``dcp.save`` returned): each rank's own file, the
    files hashed (each rank a share), the manifest and the final name (the log's rank); the Ref, on every rank.
    Every collective here is on the save group: a background thread may run it while training goes on.  A rank
    whose part fails (a full disk) still enters every collective, so all ranks raise the same error together:
    an ``OSError`` with the failing rank's errno (a full disk stops the run, resumable), else a CheckpointError."""
    import torch.distributed as dist

    group = d.save_group()
    problem: OSError | None = None
    try:
        write_artifact(tmp, f"rank{d.rank}.pt", own)
    except OSError as e:
        problem = e
    dist.barrier(group=group)  # (every rank's files are written: DCP's before dcp.save returned, its own now)
    _trace("sharded-written", stem)
    names = sorted({v.relative_path for v in meta.storage_data.values()} | {".metadata"}
                   | {f"rank{i}.pt" for i in range(d.world)})
    missing = [n for n in names if not (tmp / n).exists()]
    files = {}
    try:
        files = {n: _sha256_file(tmp / n) for n in names[d.rank::d.world] if n not in missing}
    except OSError as e:
        problem = problem or e
    share = {"missing": missing[:3], "files": files,
             "error": (problem.errno, f"{type(problem).__name__}: {problem}") if problem else None}
    shares: list[Any] | None = [None] * d.world if d.writer else None
    dist.gather_object(share, shares, dst=d.writer_rank, group=group)
    said: list[Any] = [None]
    if d.writer:
        assert shares is not None
        failed = {i: s["error"] for i, s in enumerate(shares) if s["error"]}
        lacking = {i: s["missing"] for i, s in enumerate(shares) if s["missing"]}
        if failed:
            i, (number, text) = next(iter(failed.items()))
            said[0] = ("error", f"rank {i} could not write its part of sharded checkpoint {tmp}: {text}", number)
        elif lacking:
            said[0] = ("error", f"a sharded checkpoint needs its folder on a filesystem every rank sees (one node, or "
                                f"a shared mount): rank(s) {', '.join(map(str, lacking))} cannot see "
                                f"{', '.join(sorted({n for v in lacking.values() for n in v}))} in {tmp}", None)
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            try:
                said[0] = ("ref", _commit(root, folder, stem, tmp, shares, d.world, epoch, aliases))
            except OSError as e:
                said[0] = ("error", f"cannot finish the sharded checkpoint {tmp}: {e}", e.errno)
    dist.broadcast_object_list(said, src=d.writer_rank, group=group)
    if said[0][0] == "error":
        _, text, number = said[0]
        if number is not None:
            raise OSError(number, text)  # (environmental() judges it: a full disk stops the run, resumable)
        raise CheckpointError(text)
    ref: Ref = said[0][1]
    return ref


def dcp_error(e: BaseException) -> BaseException:
    """The exception behind a DCP ``CheckpointException`` (a ``BaseException`` in torch 2.13, whose ``failures``
    map ranks to ``(exception, traceback)``): the first failing rank's; else ``e``."""
    failures = getattr(e, "failures", None)
    if isinstance(failures, dict) and failures:
        inner = next(iter(failures.values()))
        inner = inner[0] if isinstance(inner, tuple) and inner else inner
        if isinstance(inner, BaseException):
            return inner
    return e


@contextlib.contextmanager
def _dcp(what: str) -> Iterator[None]:
    """DCP's failures as fsmtrain's: a full disk or a lost peer as the exception itself (the runner stops the run
    resumable, or treats it as an interruption), anything else as a CheckpointError naming ``what``."""
    from torch.distributed.checkpoint.api import CheckpointException

    from ..errors import environmental
    from .distributed import peer_lost

    try:
        yield
    except CheckpointError:
        raise
    except (CheckpointException, Exception) as e:
        inner = dcp_error(e)
        if environmental(inner) or peer_lost(inner):
            raise inner from None
        text = str(inner).strip().splitlines()
        raise CheckpointError(f"{what} ({type(inner).__name__}: {text[0][:300] if text else ''})") from None


def _writer(path: Path, name: str) -> Any:
    """DCP's file writer, with ``name`` as the save's id where DCP would put a random one (``.metadata`` holds it):
    the same state gives the same bytes, so a step redone after a resume commits the same Ref."""
    from torch.distributed.checkpoint.filesystem import FileSystemWriter
    from torch.distributed.checkpoint.metadata import StorageMeta

    class Writer(FileSystemWriter):
        def storage_meta(self) -> StorageMeta:
            return StorageMeta(checkpoint_id=name, save_id=name)

    return Writer(path)


def _commit(root: Path, folder: str, stem: str, tmp: Path, shares: list[dict[str, Any]], world: int,
            epoch: Any, aliases: Mapping[str, str]) -> Ref:
    """The log's rank: the manifest of the hashed files, the folder renamed to its hash, then the manifest in it."""
    files = {}
    for s in shares:
        files.update(s["files"])
    manifest = {"kind": KIND, "version": 1, "world_size": world, "epoch": epoch,
                "files": [{"path": n, "sha256": files[n][0], "size": files[n][1]} for n in sorted(files)]}
    if aliases:  # tied weights: saved once, under the first name
        manifest["aliases"] = dict(sorted(aliases.items()))
    data = json.dumps(manifest, sort_keys=True, indent=1).encode()
    final = root / folder / f"{stem}-{hashlib.sha256(data).hexdigest()[:12]}.dcp"
    if (final / MANIFEST).exists():
        shutil.rmtree(tmp)  # the same checkpoint, saved before (a step redone): its files are these bytes
    else:
        if final.exists():
            shutil.rmtree(final)  # a rename whose manifest was never written
        os.replace(tmp, final)
        fsync_dir(final.parent)
    _trace("sharded-renamed", stem)
    ref = write_artifact(root, f"{folder}/{final.name}/{MANIFEST}", data)
    _trace("sharded-durable", stem)
    return ref


def verify_sharded(root: Path, ref: Ref) -> dict[str, Any]:
    """The manifest of sharded checkpoint ``ref`` once it and every file it lists match their size and sha256;
    :class:`CheckpointError` naming what is missing or altered otherwise."""
    from .checkpoints import read_verified

    data = read_verified(root, ref)
    try:
        manifest = json.loads(data)
        files = manifest["files"]
        if manifest.get("kind") != KIND or not isinstance(files, list):
            raise ValueError
    except (ValueError, KeyError, TypeError):
        raise CheckpointError(f"checkpoint {ref.path} is not an fsmtrain sharded checkpoint manifest") from None
    base = (root / ref.path).parent
    for f in files:
        path = base / f["path"]
        if not path.is_file():
            raise CheckpointError(f"sharded checkpoint {ref.path}: its file {f['path']} is missing")
        digest, size = _sha256_file(path)
        if size != f["size"] or digest != f["sha256"]:
            raise CheckpointError(f"sharded checkpoint {ref.path}: its file {f['path']} does not match its recorded "
                                  f"size and sha256 (truncated or altered)")
    return dict(manifest)


def local_buffers(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's saved buffers that FSDP2 leaves unsharded and unsynchronised (BatchNorm's running statistics:
    each rank its own), as CPU copies: DCP keeps one copy of a plain tensor for all ranks, so each rank's go in
    its own file."""
    keys = set(model.state_dict())
    return {name: b.detach().cpu().clone() for name, b in model.named_buffers()
            if name in keys and not _is_dtensor(b)}


def _is_dtensor(t: Any) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:
        return False
    return isinstance(t, DTensor)


def load_own(root: Path, ref: Ref, manifest: Mapping[str, Any], rank: int, map_location: Any) -> dict[str, Any]:
    """Rank ``rank``'s own state from the checkpoint (its RNGs...), checked against the manifest."""
    name = f"rank{rank}.pt"
    entry = next((f for f in manifest["files"] if f["path"] == name), None)
    if entry is None:
        raise CheckpointError(f"sharded checkpoint {ref.path} lists no {name}")
    from .checkpoints import read_verified

    rel = str(Path(ref.path).parent / name)
    data = read_verified(root, Ref(rel, entry["sha256"], entry["size"]))
    return dict(torch.load(io.BytesIO(data), map_location=map_location, weights_only=True))


def load_sharded(r: Any, root: Path, ref: Ref, manifest: Mapping[str, Any], map_location: Any = None) -> dict[str, Any]:
    """Load sharded checkpoint ``ref`` (verified: :func:`verify_sharded`) into resources ``r`` on every rank of a
    distributed run; each rank reads its own shards (resharded by DCP at another world size).  Returns the rank's
    own state (RNGs, scheduler...) with ``world_size`` of the save."""
    from torch.distributed.checkpoint import state_dict_loader as dcp_load
    from torch.distributed.checkpoint.state_dict import set_state_dict

    d = r.dist
    folder = (root / ref.path).parent
    sd, aliases = state_dicts(r)
    with _dcp(f"sharded checkpoint {ref.path} does not fit this model and optimizer"):
        dcp_load.load(sd, checkpoint_id=str(folder), process_group=d.save_group())
    _untie(sd["model"], aliases)
    set_state_dict(r.model, r.optimizer, model_state_dict=sd["model"], optim_state_dict=sd["optimizer"])
    same = manifest["world_size"] == d.world
    own = load_own(root, ref, manifest, d.rank if same else 0, map_location)
    buffers = dict(r.model.named_buffers())
    with torch.no_grad():
        for name, value in (own.get("buffers") or {}).items():  # this rank's own (rank 0's at another world size)
            if name in buffers and not _is_dtensor(buffers[name]):
                buffers[name].copy_(value)
    return {**own, "world_size": manifest["world_size"]}


def load_full(root: Path, ref: Ref, model: torch.nn.Module, optimizer: Any = None) -> None:
    """Load sharded checkpoint ``ref`` (verified) into an unsharded ``model`` (and ``optimizer``) in one process:
    DCP gathers the shards."""
    from torch.distributed.checkpoint import state_dict_loader as dcp_load
    from torch.distributed.checkpoint.state_dict import set_state_dict

    folder = str((root / ref.path).parent)
    with _dcp(f"sharded checkpoint {ref.path} does not fit this model and optimizer"), _one_process():
        if optimizer is None:
            whole = dict(model.state_dict())
            aliases = _tied(model, whole)
            template = {"model": {k: v for k, v in whole.items() if k not in aliases}}
            dcp_load.load(template, checkpoint_id=folder, no_dist=True)
            _untie(template["model"], aliases)
            model.load_state_dict(template["model"])
            return
        sd, aliases = state_dicts(_Pair(model, optimizer))
        dcp_load.load(sd, checkpoint_id=folder, no_dist=True)
        _untie(sd["model"], aliases)
        set_state_dict(model, optimizer, model_state_dict=sd["model"], optim_state_dict=sd["optimizer"])


def full_model_state(root: Path, ref: Ref) -> dict[str, torch.Tensor]:
    """The whole model state dict of sharded checkpoint ``ref`` (verified), gathered from its shards in this
    process (an export of the best model): tensors shaped from DCP's metadata, then filled by ``dcp.load``."""
    from torch.distributed.checkpoint import state_dict_loader as dcp_load
    from torch.distributed.checkpoint.filesystem import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    folder = str((root / ref.path).parent)
    model: dict[str, Any] = {}
    for key, meta in FileSystemReader(folder).read_metadata().state_dict_metadata.items():
        if key.startswith("model.") and isinstance(meta, TensorStorageMetadata):
            model[key[len("model."):]] = torch.empty(meta.size, dtype=meta.properties.dtype)
    if not model:
        raise CheckpointError(f"sharded checkpoint {ref.path} holds no model tensors")
    with _dcp(f"sharded checkpoint {ref.path} cannot be read"), _one_process():
        dcp_load.load({"model": model}, checkpoint_id=folder, no_dist=True)
    _untie(model, json.loads((root / ref.path).read_bytes()).get("aliases") or {})
    return model


class _Pair:
    def __init__(self, model: torch.nn.Module, optimizer: Any) -> None:
        self.model, self.optimizer = model, optimizer


@contextlib.contextmanager
def _one_process() -> Iterator[None]:
    """DCP in this process alone, without its warning that it assumes so."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*single process", category=UserWarning)
        yield
