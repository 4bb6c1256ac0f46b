"""One run on many processes: ``torch.distributed`` (DDP), launched by ``torchrun``, the log written once.

Every process (rank) runs the same machine over the same state.  One of them, the **writer**, holds
the log (and the checkpoint files); it decides what the others cannot know — where the run stands
after a resume, the answer a gate got, the clock a time budget reads, a request to stop — and tells
them (``agree``).  Data is sharded by rank, a pure function of ``(seed, epoch, rank, world size)``;
metrics are summed over the ranks (float64 all-reduce) before any condition reads them, so every rank
decides the same; after each step every rank compares a digest of the step (its updates and
decision) with the others', and stops loudly when one diverged (``RankDiverged``).

Use it from a script that ``torchrun`` starts on every rank::

    trainer = Trainer(machine, build, log="runs.db", distributed=True)
    runner = trainer.fit(config)       # every rank; only the writer writes

``torchrun --max-restarts=N`` restarts every rank when one dies; they resume the run from its last
commit, as one process would.  ``fsmtrain demo --nproc 2`` does this for the demo.  See
``spec/training.md`` ("Distributed runs") for what is promised and what is not.
"""

from __future__ import annotations

import ctypes
import datetime
import io
import os
import pickle
import signal
import socket
import struct
import sys
from typing import Any

import torch
import torch.distributed as dist

from ..errors import FsmtrainError, PeerLost, ResourceError
from ..launch import launch_command
from .lifetime import die_with_parent

__all__ = ["Distributed", "RankDiverged", "launch_command", "peer_lost"]


class RankDiverged(FsmtrainError, RuntimeError):
    """The processes of one run no longer agree on its state: training stopped before anything diverged was written."""


class Distributed:
    """This process's place in a distributed run, and the few collectives fsmtrain needs.

    Made from torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``...);
    joins the default process group if it is not joined yet (``gloo`` on the CPU, ``nccl`` with
    CUDA), with ``timeout`` seconds (default ``$FSMTRAIN_DIST_TIMEOUT``, else 120) for joining it — the store, the
    connections and a first barrier; a group that does not connect in time raises :class:`~fsmtrain.errors.PeerLost`
    — and for any collective.  The writer is the rank that holds the log:
    ``writer`` (a rank) if given, else ``$FSMTRAIN_LOG_RANK``, else the lowest rank on the host
    named by ``$FSMTRAIN_LOG_HOST`` (the node that started the job), else rank 0.
    """

    def __init__(self, *, backend: str | None = None, timeout: float | None = None, writer: int | None = None) -> None:
        if not dist.is_available():
            raise ResourceError("torch.distributed is not available in this torch build")
        missing = [k for k in ("RANK", "WORLD_SIZE") if k not in os.environ] if not dist.is_initialized() else []
        if missing:
            raise ResourceError(f"distributed=True needs the environment torchrun sets ({', '.join(missing)} missing): "
                                "start the script with `torchrun --nproc-per-node N script.py` (or "
                                "`python -m torch.distributed.run ...`)")
        self.timeout = _timeout(timeout)
        # the save group's collectives wait for the slowest rank's shards to reach the disk: minutes on network storage
        self.save_timeout = max(self.timeout, _timeout(None, "FSMTRAIN_SAVE_TIMEOUT", 900.0))
        if not dist.is_initialized():
            die_with_parent()  # torchrun's worker dies with torchrun (its own session would outlive it)
            backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
            if backend == "nccl":
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            try:  # every phase of joining is bounded: the store, the group's connections, a first barrier
                dist.init_process_group(backend, timeout=datetime.timedelta(seconds=self.timeout))
                dist.barrier()
            except Exception as e:
                raise PeerLost(f"rank {os.environ.get('RANK', '?')}: the {os.environ.get('WORLD_SIZE', '?')} processes "
                               f"of this run did not all connect within {self.timeout:g} s ({_first_line(e)}); this "
                               "process stops so that torchrun restarts the group, and the run stays resumable "
                               "(FSMTRAIN_DIST_TIMEOUT sets the limit)") from None
        self.rank = dist.get_rank()
        self.world = dist.get_world_size()
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = torch.device("cuda", self.local_rank) if dist.get_backend() == "nccl" else torch.device("cpu")
        self._stop = False
        self._save_group: Any = None
        self.stopping = False
        self.writer_rank = self._choose_writer(writer)
        signal.signal(signal.SIGTERM, self._on_term)

    def _choose_writer(self, writer: int | None) -> int:
        if writer is None and os.environ.get("FSMTRAIN_LOG_RANK"):
            writer = int(os.environ["FSMTRAIN_LOG_RANK"])
        if writer is not None:
            if not 0 <= writer < self.world:
                raise ResourceError(f"the log's rank must be in 0..{self.world - 1}, got {writer}")
            return writer
        host = os.environ.get("FSMTRAIN_LOG_HOST")
        if not host:
            return 0
        here = int(socket.gethostname() == host or socket.getfqdn() == host)
        flags = self.all_gather_ints([here])
        candidates = [r for r in range(self.world) if flags[r][0]]
        if not candidates:
            raise ResourceError(f"no rank runs on FSMTRAIN_LOG_HOST={host!r}, the host that holds the log")
        return candidates[0]

    def _on_term(self, signum: int, frame: Any) -> None:
        self._stop = True  # every rank gets torchrun's SIGTERM; they agree at the next step

    @property
    def writer(self) -> bool:
        """Whether this process holds the log."""
        return self.rank == self.writer_rank

    # -- collectives ------------------------------------------------------------------------
    def agree(self, value: Any) -> Any:
        """The writer's ``value``, on every rank (pickled bytes in a uint8 tensor: no NumPy needed)."""
        data = self.broadcast_bytes(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL) if self.writer else None)
        return value if self.writer else pickle.loads(data)

    def all_gather_ints(self, values: list[int]) -> list[list[int]]:
        t = torch.tensor(values, dtype=torch.int64, device=self.device)
        out = torch.empty(self.world * len(values), dtype=torch.int64, device=self.device)
        gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor  # (renamed in torch 2.13)
        gather(out, t)
        return out.view(self.world, len(values)).tolist()

    def tick(self, now: float, digest: str) -> float:
        """Once per step on every rank: the writer's clock, any rank's stop request, and the previous step's
        digest compared across ranks (one collective)."""
        bits = struct.unpack("<q", struct.pack("<d", now))[0]
        rows = self.all_gather_ints([bits, int(self._stop), int(digest[:15] or "0", 16)])
        digests = {row[2] for row in rows}
        if len(digests) > 1:
            odd = [r for r, row in enumerate(rows) if row[2] != rows[self.writer_rank][2]]
            raise RankDiverged(f"rank(s) {', '.join(map(str, odd))} of {self.world} computed a different step than the "
                               f"log's rank {self.writer_rank} (their updates or decisions differ): the ranks no longer "
                               "train the same run. Nothing diverged was written; look for code that depends on the "
                               "rank (an unseeded RNG, data read differently), then resume")
        self.stopping = any(row[1] for row in rows)
        return float(struct.unpack("<d", struct.pack("<q", rows[self.writer_rank][0]))[0])

    def lost(self, error: BaseException) -> str | None:
        """Why ``error`` comes from another rank's death or hang (a collective that failed, was reset or timed out),
        or None when the action raised it on a healthy group (see :func:`peer_lost`)."""
        return peer_lost(error)

    def all_sum(self, values: list[float]) -> list[float]:
        """Sums over the ranks, in float64: the same bits on every rank."""
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return [float(v) for v in t.tolist()]

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` on the writer (in rank order); None elsewhere (pickled bytes in uint8 tensors, padded
        to the longest: no NumPy needed)."""
        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        sizes = [row[0] for row in self.all_gather_ints([len(data)])]
        buf = torch.zeros(max(sizes), dtype=torch.uint8)
        buf[:len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        buf = buf.to(self.device)
        out = [torch.empty_like(buf) for _ in range(self.world)] if self.writer else None
        dist.gather(buf, out, dst=self.writer_rank)
        if out is None:
            return None
        return [pickle.loads(_bytes_of(t.cpu(), n)) for t, n in zip(out, sizes, strict=True)]

    def broadcast_bytes(self, data: bytes | None) -> bytes:
        """The writer's bytes on every rank (a checkpoint file: other nodes need no shared disk): a length, then a
        uint8 tensor (no NumPy needed)."""
        size = torch.tensor([len(data) if self.writer and data is not None else 0], dtype=torch.int64, device=self.device)
        dist.broadcast(size, src=self.writer_rank)
        n = int(size.item())
        if self.writer and data is not None:
            buf = torch.frombuffer(bytearray(data), dtype=torch.uint8) if n else torch.empty(0, dtype=torch.uint8)
            buf = buf.to(self.device)
        else:
            buf = torch.empty(n, dtype=torch.uint8, device=self.device)
        dist.broadcast(buf, src=self.writer_rank)
        return data if self.writer and data is not None else _bytes_of(buf.cpu(), n)

    def barrier(self) -> None:
        dist.barrier()

    def save_group(self) -> Any:
        """A gloo group of every rank for the collectives of sharded checkpoints (made on first use, which every
        rank reaches together): DCP's planning and commit never share a communicator with training (a save
        on nccl would queue behind, or interleave with, the training's collectives)."""
        if self._save_group is None:
            self._save_group = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=self.save_timeout))
        return self._save_group

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` in DistributedDataParallel (its parameters broadcast from rank 0 once)."""
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.local_rank] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)


_PEER_SIGNS = ("connection reset by peer", "connection closed by peer", "connection refused", "broken pipe",
               "connectfullmesh", "timed out", "timeout", "socket closed", "no route to host",
               "nccl communicator was aborted", "nccl error", "watchdog", "process group", "unhandled system error")


def peer_lost(error: BaseException) -> str | None:
    """Why ``error`` (or what caused it) is another rank's death or hang, or None.

    torch raises ``DistError`` and its subclasses (``DistBackendError``, ``DistNetworkError``, ``DistStoreError``)
    for a failed collective, a broken connection and a timeout on every backend; gloo's own errors are plain
    ``RuntimeError``s whose text names the broken connection (``Connection reset by peer``, ``connectFullMesh``,
    a timeout).  Both are interruptions: the process exits for torchrun to restart the group.
    """
    seen: set[int] = set()
    e: BaseException | None = error
    kinds = tuple(k for k in (getattr(dist, "DistError", None), getattr(dist, "DistBackendError", None),
                              getattr(dist, "DistNetworkError", None), getattr(dist, "DistStoreError", None))
                  if isinstance(k, type))
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if (kinds and isinstance(e, kinds)) or (isinstance(e, RuntimeError) and dist.is_initialized()
                                                and any(s in str(e).lower() for s in _PEER_SIGNS)):
            return f"another process of the run died or hung ({_first_line(e)})"
        e = e.__cause__ or e.__context__
    return None


def _timeout(timeout: float | None, var: str = "FSMTRAIN_DIST_TIMEOUT", default: float = 120.0) -> float:
    """Seconds any collective, and joining the group, may take: given, else ``$FSMTRAIN_DIST_TIMEOUT``, else 120
    (``var``, ``default``: another limit's)."""
    if timeout is None:
        text = os.environ.get(var, "").strip()
        try:
            timeout = float(text) if text else default
        except ValueError:
            raise ResourceError(f"{var} must be a number of seconds, got {text!r}") from None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < float("inf"):
        raise ResourceError(f"the distributed timeout must be a positive number of seconds, got {timeout!r}")
    return float(timeout)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:200]}" if text else type(e).__name__


def _bytes_of(t: torch.Tensor, n: int) -> bytes:
    """The first ``n`` bytes of a contiguous CPU uint8 tensor, read in one call (no NumPy)."""
    t = t.contiguous()
    return ctypes.string_at(t.data_ptr(), n) if n else b""


def load_bytes(data: bytes, map_location: Any = None) -> Any:
    return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)


def main(argv: list[str] | None = None) -> int:
    """``python -m fsmtrain.train.distributed resume LOG RUN MODULE:ATTR`` on every rank (what a worker starts
    through torchrun for a run recorded with a world size above 1): resume the run until it halts."""
    import importlib

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 4 or args[0] != "resume":
        print("usage: python -m fsmtrain.train.distributed resume LOG RUN MODULE:ATTR", file=sys.stderr)
        return 2
    _, log, run, target = args
    module, _, attr = target.partition(":")
    sys.path.insert(0, "")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    trainer = obj(log, distributed=True)
    try:
        runner = trainer._drive(trainer.resume(int(run)), "exit")
    finally:
        trainer.close()
    return 0 if runner.status != "failed" else 1


if __name__ == "__main__":
    sys.exit(main())
