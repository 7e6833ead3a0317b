"""Training on many processes with PyTorch's own engine (``torch.distributed``), started by ``torchrun``.

``torchrun --nproc_per_node N -m distill.train ...`` (several nodes: ``--nnodes``, ``--rdzv-backend c10d``,
``--rdzv-endpoint HOST:PORT``) starts N copies of the command; each reads ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK`` from its environment and :func:`setup` joins the process group: NCCL with one GPU per
process (``cuda:LOCAL_RANK``) on GPUs, gloo on CPU. Without those variables (or with one process) every
helper here is a no-op and the run is the single-process run, bit for bit.

What a run of N processes does:

* ``--batch-size`` is the GLOBAL batch: every step takes one global batch of the single-process run
  (:class:`RankBatchSampler`: same (seed, epoch) permutation, incomplete last batch dropped) and each
  process takes its ``batch / N`` consecutive images of it; the batch must be divisible by N.
* Plain training wraps the detector in ``DistributedDataParallel``. Distillation steps several
  optimizers with gradients taken one loss at a time (``torch.autograd.grad``), which DDP's backward hooks
  never see, and runs the student through ``forward_features``, not ``forward``: its student, adapters
  and discriminators are kept in step by :func:`average_gradients` before every optimizer step instead,
  their initial weights broadcast from rank 0 (:func:`broadcast_modules`), as DDP does. The teacher is
  loaded by every process, frozen, and never synchronised.
* Decisions are the same on every rank: the non-finite-loss policy sees :func:`all_true`, the GAN-KD
  schedule the epoch means of :func:`reduce_sums` (what the metrics line shows too).
* Evaluation is split across ranks and merged on rank 0 (:func:`shard_evaluation`).
* Only rank 0 writes (checkpoints, ``config.yaml``, logs, ``summary.json``) and prints; other ranks write
  nothing to stdout and draw no progress bars (their warnings and errors still go to stderr).
* Checkpoints hold the unwrapped model, so a run resumes under any world size; after an elastic restart
  (``torchrun --max-restarts K``) the workers continue from the run's ``last.pt`` (:func:`elastic_checkpoint`).
"""
from __future__ import annotations

import atexit
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import BatchSampler, Sampler

ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
JOB_MARK = ".torchelastic_job"           # in a run folder: the torchrun job that owns it (restarts continue it)


@dataclass(frozen=True)
class DistContext:
    """This process in the job: ``rank`` in 0..world_size-1, ``local_rank`` on its node, its ``device``
    and the process group's ``backend`` ("nccl", "gloo"; None with one process)."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device | None = None
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_CTX = DistContext()
_SAVED: dict[str, Any] = {}


def context() -> DistContext:
    """The context set by :func:`setup` (one process, rank 0, until then)."""
    return _CTX


def is_main() -> bool:
    """True on the process that writes files and prints: rank 0, or the only process."""
    return _CTX.is_main


def launched_world_size() -> int:
    """WORLD_SIZE of a ``torchrun`` launch (1 when the command was not started by torchrun)."""
    if not all(k in os.environ for k in ENV):
        return 1
    return int(os.environ["WORLD_SIZE"])


def _rank_device(name: str, local_rank: int) -> torch.device:
    """The device of this process: ``cuda:LOCAL_RANK`` for 'auto' (with CUDA) and 'cuda', else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type == "cpu":
        return dev
    if dev.type != "cuda":
        raise ValueError(f"--device {name}: torchrun runs use 'auto', 'cuda' or 'cpu'")
    if not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine (use --device cpu: gloo)")
    if dev.index is not None:
        raise ValueError(f"--device {name}: under torchrun each process uses cuda:LOCAL_RANK; pass --device cuda")
    if local_rank >= torch.cuda.device_count():
        raise ValueError(f"LOCAL_RANK {local_rank}: this node has {torch.cuda.device_count()} GPUs; start at most "
                         "that many processes per node (--nproc_per_node)")
    return torch.device("cuda", local_rank)


def check_batch(batch_size: int, world_size: int) -> None:
    """ValueError unless the global ``batch_size`` splits evenly over ``world_size`` processes."""
    if batch_size % world_size:
        raise ValueError(f"--batch-size {batch_size} is the global batch of {world_size} processes: it must be "
                         f"divisible by {world_size} (each process takes batch / {world_size} images)")


def check_options(world_size: int, device: torch.device, batch_size: int | None, sync_bn: bool) -> None:
    """ValueError (one line) when the run's options do not fit ``world_size`` processes on ``device``."""
    if batch_size is not None:
        check_batch(batch_size, world_size)
    if sync_bn and world_size > 1 and device.type != "cuda":
        raise ValueError("--sync-bn: PyTorch's SyncBatchNorm runs only on GPUs (NCCL), not on CPU with gloo; "
                         "drop --sync-bn (each process then normalises with its own batch / N images)")


def setup(device: str, *, batch_size: int | None = None, sync_bn: bool = False) -> DistContext:
    """Join the ``torchrun`` job this process belongs to (idempotent) and return its context.

    ``device``: the run's ``--device``. Not under torchrun, or with one process: no process group, the
    device of :func:`distill.runs.pick_device`. ValueError naming the option when ``batch_size`` (the
    global batch) is not divisible by the world size, or ``sync_bn`` is asked for on CPU.
    """
    global _CTX
    world = launched_world_size()
    if world <= 1:
        from .runs import pick_device
        if sync_bn:
            print("--sync-bn: one process, nothing to synchronise: plain BatchNorm", file=sys.stderr)
        _CTX = DistContext(device=pick_device(device))
        return _CTX
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    dev = _rank_device(device, local_rank)
    check_options(world, dev, batch_size, sync_bn)
    if dist.is_initialized():
        _CTX = DistContext(rank, world, local_rank, dev, str(dist.get_backend()))
        return _CTX
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    store = _attempt_store()
    dist.init_process_group(backend, device_id=dev if dev.type == "cuda" else None,
                            **({"store": store, "rank": rank, "world_size": world} if store is not None else {}))
    atexit.register(teardown)
    _CTX = DistContext(rank, world, local_rank, dev, backend)
    if rank != 0:
        _quiet()
    return _CTX


def _attempt_store():
    """torchrun's own store, keys scoped to this attempt, for a worker group it restarted on one node; else None
    (the default env:// store). torchrun keeps one store across restarts: without the scope, a restarted worker
    can read the previous attempt's addresses and fail to connect (pytorch/pytorch#135712, #167288). On several
    nodes each agent counts restarts on its own, so there launch torchrun with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1
    (a fresh store per attempt) instead."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or restart_count() == 0:
        return None
    if os.environ.get("LOCAL_WORLD_SIZE") != os.environ.get("WORLD_SIZE"):
        return None
    store, _, _ = next(dist.rendezvous("env://"))
    return dist.PrefixStore(f"distill/attempt_{restart_count()}", store)


def _quiet() -> None:
    """Ranks other than 0: stdout to /dev/null, tqdm bars disabled (stderr keeps warnings and errors)."""
    from tqdm import tqdm
    init = tqdm.__init__

    def disabled_init(self, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **{**kwargs, "disable": True})

    _SAVED.update(stdout=sys.stdout, tqdm_init=init)
    sys.stdout = open(os.devnull, "w")
    tqdm.__init__ = disabled_init


def teardown() -> None:
    """Leave the process group (``destroy_process_group``) and restore this process's output; safe to call
    twice, and registered with ``atexit`` so it also runs when the run stops on an error."""
    global _CTX
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    if "stdout" in _SAVED:
        from tqdm import tqdm
        devnull, sys.stdout = sys.stdout, _SAVED.pop("stdout")
        tqdm.__init__ = _SAVED.pop("tqdm_init")
        devnull.close()
    _CTX = DistContext()


def barrier() -> None:
    """Wait until every rank gets here (no-op with one process)."""
    if _CTX.enabled:
        dist.barrier()


@contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. generating a dataset cache), the other ranks after it, then read it."""
    if not _CTX.is_main:
        barrier()
    yield
    if _CTX.is_main:
        barrier()


def _comm_device() -> torch.device:
    return _CTX.device if _CTX.backend == "nccl" else torch.device("cpu")


def all_true(flag: bool) -> bool:
    """True when ``flag`` is true on every rank: one decision for all (e.g. "this step's loss is finite")."""
    if not _CTX.enabled:
        return bool(flag)
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def all_reduce_mean(values: Sequence[float]) -> list[float]:
    """The mean over ranks of each number in ``values`` (same length on every rank); float64."""
    if not _CTX.enabled:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return (t / _CTX.world_size).tolist()


def reduce_sums(sums: dict[str, float], counts: dict[str, int]) -> tuple[dict[str, float], dict[str, int]]:
    """Per-key sums and counts added over ranks (keys logged on any rank; absent keys count 0), so that
    ``sums[k] / counts[k]`` is the mean over every rank's logged values."""
    if not _CTX.enabled:
        return dict(sums), dict(counts)
    key_lists: list[Any] = [None] * _CTX.world_size
    dist.all_gather_object(key_lists, sorted(sums))
    keys = sorted({k for ks in key_lists for k in ks})
    t = torch.tensor([[float(sums.get(k, 0.0)) for k in keys], [float(counts.get(k, 0)) for k in keys]],
                     dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    s, c = t.tolist()
    return dict(zip(keys, s)), {k: int(round(n)) for k, n in zip(keys, c)}


def mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """Each logged number averaged over the ranks that logged it (e.g. an epoch's mean loss of each rank)."""
    sums, counts = reduce_sums(values, {k: 1 for k in values})
    return {k: sums[k] / counts[k] for k in sums if counts[k]}


def _grouped(tensors: Sequence[torch.Tensor]) -> dict[tuple, list[torch.Tensor]]:
    groups: dict[tuple, list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.dtype, t.device), []).append(t)
    return groups


def average_gradients(grads: Sequence[torch.Tensor | None]) -> Sequence[torch.Tensor | None]:
    """Average gradient tensors over ranks, in place (one all-reduce per dtype, as DDP's buckets do); None
    entries (parameters a loss does not reach, the same on every rank) are skipped. Returns ``grads``."""
    if not _CTX.enabled:
        return grads
    for group in _grouped([g for g in grads if g is not None]).values():
        flat = torch.cat([g.reshape(-1) for g in group]).to(_comm_device())
        dist.all_reduce(flat)
        flat /= _CTX.world_size
        for g, part in zip(group, flat.split([g.numel() for g in group])):
            g.copy_(part.view_as(g))
    return grads


def average_optimizer_gradients(optimizer: torch.optim.Optimizer) -> None:
    """:func:`average_gradients` of the ``.grad`` of every parameter ``optimizer`` steps."""
    average_gradients([p.grad for g in optimizer.param_groups for p in g["params"]])


def broadcast_modules(*modules: nn.Module | None) -> None:
    """Copy rank 0's parameters and buffers into every rank's ``modules`` (None entries skipped)."""
    if not _CTX.enabled:
        return
    tensors = [t for m in modules if m is not None for t in (*m.parameters(), *m.buffers())]
    for group in _grouped(tensors).values():
        flat = torch.cat([t.detach().reshape(-1) for t in group]).to(_comm_device())
        dist.broadcast(flat, src=0)
        with torch.no_grad():
            for t, part in zip(group, flat.split([t.numel() for t in group])):
                t.copy_(part.view_as(t))


def sync_buffers(module: nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank, as DDP broadcasts them."""
    if not _CTX.enabled:
        return
    buffers = list(module.buffers())
    for group in _grouped(buffers).values():
        flat = torch.cat([b.reshape(-1) for b in group]).to(_comm_device())
        dist.broadcast(flat, src=0)
        for b, part in zip(group, flat.split([b.numel() for b in group])):
            b.copy_(part.view_as(b))


def prepare_model(model: nn.Module, sync_bn: bool) -> nn.Module:
    """The detector of this rank: BatchNorm layers turned into SyncBatchNorm with ``sync_bn`` (several GPU
    processes only), rank 0's initial weights everywhere. The module stays unwrapped (what checkpoints hold)."""
    if _CTX.enabled and sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    broadcast_modules(model)
    return model


def wrap_ddp(model: nn.Module) -> nn.Module:
    """``model`` in ``DistributedDataParallel`` under several processes (itself otherwise)."""
    if not _CTX.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel
    ids = [_CTX.device.index] if _CTX.backend == "nccl" else None
    return DistributedDataParallel(model, device_ids=ids)


def rank_seed(seed: int) -> int:
    """A per-rank seed for the global RNG (augmentation): ``seed`` itself on rank 0."""
    return seed + 1_000_003 * _CTX.rank


class RankBatchSampler(Sampler[list[int]]):
    """This rank's share of every global batch: ``sampler``'s order cut into batches of ``batch_size``
    (the incomplete last one dropped, as a single process with ``drop_last`` does), each split into
    ``world_size`` consecutive shares of ``batch_size / world_size`` indices. With one process it yields
    exactly ``BatchSampler(sampler, batch_size, drop_last=True)``; every rank yields as many batches."""

    def __init__(self, sampler: Sampler[int] | Sequence[int], batch_size: int, rank: int | None = None,
                 world_size: int | None = None):
        self.rank = _CTX.rank if rank is None else rank
        self.world_size = _CTX.world_size if world_size is None else world_size
        check_batch(batch_size, self.world_size)
        self.batches = BatchSampler(sampler, batch_size, drop_last=True)
        self.share = batch_size // self.world_size

    def __iter__(self) -> Iterator[list[int]]:
        lo = self.rank * self.share
        for batch in self.batches:
            yield batch[lo:lo + self.share]

    def __len__(self) -> int:
        return len(self.batches)


class MergingEvaluator:
    """An evaluator of one rank's share of the images (``reset / process / evaluate``): ``evaluate`` gathers
    every rank's detections to rank 0, which feeds them to ``evaluator`` in the images' original order and
    scores them; every rank returns rank 0's metrics."""

    def __init__(self, evaluator: Any):
        self.evaluator = evaluator
        self.records: list[tuple] = []

    def reset(self) -> None:
        self.records = []

    def process(self, image_id: int, boxes_xyxy: Any, scores: Any, labels: Any) -> None:
        self.records.append((int(image_id), boxes_xyxy, scores, labels))

    def evaluate(self, per_class: bool = True) -> dict[str, Any]:
        gathered: list[Any] | None = [None] * _CTX.world_size if _CTX.is_main else None
        dist.gather_object(self.records, gathered, dst=0)
        result: list[Any] = [None]
        if _CTX.is_main:
            try:
                self.evaluator.reset()
                longest = max(len(r) for r in gathered)
                for k in range(longest):         # shares were taken round-robin: interleave them back
                    for records in gathered:
                        if k < len(records):
                            self.evaluator.process(*records[k])
                result[0] = self.evaluator.evaluate(per_class=per_class)
            except Exception as e:               # tell the other ranks instead of leaving them waiting
                result[0] = f"evaluation failed on rank 0: {e}"
                dist.broadcast_object_list(result, src=0)
                raise
        dist.broadcast_object_list(result, src=0)
        if isinstance(result[0], str):
            raise RuntimeError(result[0])
        return result[0]


def shard_evaluation(indices: Sequence[int], evaluator: Any) -> tuple[list[int], Any]:
    """(this rank's images, the evaluator to feed) for evaluating ``indices``: every N-th image from the
    rank's own, and a :class:`MergingEvaluator` around ``evaluator``; with one process, both unchanged."""
    if not _CTX.enabled:
        return list(indices), evaluator
    return list(indices)[_CTX.rank::_CTX.world_size], MergingEvaluator(evaluator)


def restart_count() -> int:
    """How many times ``torchrun`` has restarted this worker's group (TORCHELASTIC_RESTART_COUNT; 0 at first). Each
    node's agent counts on its own: another node may still say 0 after a restart (use :func:`is_restart_of`)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


def job_id() -> str | None:
    """The torchrun job's id when it can restart its workers (``--max-restarts`` > 0) and has an id of its own
    (``--rdzv-id``; ``--standalone`` makes one); else None."""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID")
    if int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0") or 0) <= 0 or not run_id or run_id == "none":
        return None
    return run_id


def mark_run_folder(out: str | Path) -> None:
    """Rank 0, once ``out`` is checked and ready: note in ``out/.torchelastic_job`` the torchrun job that owns
    the run, so that a restart of this job, and only of this job, continues it (:func:`is_restart_of`)."""
    if is_main() and job_id() is not None:
        from runtime.atomic import write_text_atomic
        write_text_atomic(Path(out) / JOB_MARK, job_id() + "\n")


def is_restart_of(out: str | Path) -> bool:
    """True (on every rank: call it on all) when this worker group is a restart by ``torchrun --max-restarts`` of
    the job that owns run folder ``out``: a worker of the group was restarted and ``out`` carries this job's mark.
    A first attempt refused (e.g. ``out`` holds another run) writes no mark, so its restarts are refused too."""
    restarted = restart_count()
    if _CTX.enabled:
        t = torch.tensor([restarted], dtype=torch.int64, device=_comm_device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        restarted = int(t.item())
    mark = Path(out) / JOB_MARK
    return (restarted > 0 and job_id() is not None and mark.is_file()
            and mark.read_text(encoding="utf-8").strip() == job_id())


def elastic_checkpoint(out: str | Path):
    """The checkpoint a restarted worker group continues from: the newest readable one of run folder ``out``'s
    last-N chain (None when the job's first attempt stopped before its first checkpoint)."""
    from .checkpoint import last_checkpoints, load_latest
    if not last_checkpoints(out):
        return None
    print(f"torchrun restarted the workers ({restart_count()} restart(s) here): continuing {out}")
    return load_latest(out)
