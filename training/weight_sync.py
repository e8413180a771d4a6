"""Weights from the learner to disaggregated rollout workers, as tensors over torch.distributed.

The learner (rank 0 of a small process group of its own) broadcasts the full weights to every
rollout worker (ranks 1..N), in the workers' compute dtype (``policy.dtype``: bf16 halves the
bytes), packed into buckets of at most ``BUCKET_BYTES`` so one collective carries many tensors.
The group is separate from the learner's torchrun group (a ``TCPStore`` on the learner's host and a
backend built on it), so learner ranks and Ray actors need not share a launcher: gloo over TCP
where either side is on a CPU, NCCL where both hold their model on a GPU and the learner's node
has more than one (``sync_backend`` in rollout.py; NCCL cannot join two ranks on one GPU, as a one-GPU
node's learner and worker would be). Both sides derive the same plan (names, shapes, dtypes, in
order) from the same policy config, so only the numbers travel: no pickling, no numpy copies.
"""

from __future__ import annotations

import datetime
import socket
from collections.abc import Mapping

import torch
import torch.distributed as dist

BUCKET_BYTES = 256 << 20
TIMEOUT = datetime.timedelta(minutes=10)


def plan(state: Mapping[str, torch.Tensor], dtype: torch.dtype) -> list[list[tuple[str, torch.Size]]]:
    """The tensors of ``state`` in order, grouped into buckets of one dtype (``dtype``, the workers'
    compute dtype, for every float tensor) of at most ``BUCKET_BYTES`` each (a larger tensor alone)."""
    buckets: list[list[tuple[str, torch.Size]]] = []
    size = 0
    for name in sorted(state):  # sender and receiver may hold their tensors in different orders
        t = state[name]
        if not t.is_floating_point():
            raise TypeError(f"weight sync sends float tensors; {name} is {t.dtype}")
        nbytes = t.numel() * dtype.itemsize
        if not buckets or size + nbytes > BUCKET_BYTES:
            buckets.append([])
            size = 0
        buckets[-1].append((name, t.shape))
        size += nbytes
    return buckets


def _group(host: str, port: int, rank: int, world: int, backend: str, store=None):
    if store is None:
        store = dist.TCPStore(host, port, world, False, timeout=TIMEOUT)
    if backend == "nccl":
        return dist.ProcessGroupNCCL(store, rank, world)
    return dist.ProcessGroupGloo(store, rank, world, TIMEOUT)


def transport_device(backend: str, device: torch.device | str) -> torch.device:
    """Where the buffers live: NCCL moves GPU memory, gloo host memory."""
    return torch.device(device) if backend == "nccl" else torch.device("cpu")


class WeightSender:
    """The learner's end: opens a rendezvous on construction; ``connect`` once the workers are asked to join."""

    def __init__(self, n_receivers: int, backend: str, dtype: torch.dtype, device: str = "cpu", host: str = ""):
        self.world = n_receivers + 1
        self.backend, self.dtype = backend, dtype
        self.device = transport_device(backend, device)
        self.host = host or _this_host()
        self._store = dist.TCPStore(self.host, 0, self.world, True, timeout=TIMEOUT, wait_for_workers=False)
        self.port = self._store.port
        self._pg = None

    def connect(self) -> None:
        """Blocks until every receiver has joined (call it after asking them to)."""
        self._pg = _group(self.host, self.port, 0, self.world, self.backend, store=self._store)

    @torch.no_grad()
    def send(self, weights: Mapping[str, torch.Tensor]) -> int:
        """Broadcast ``weights`` (the receivers call ``receive`` at the same time); returns the bytes sent."""
        sent = 0
        for bucket in plan(weights, self.dtype):
            buf = torch.cat([weights[name].detach().reshape(-1).to(self.device, self.dtype) for name, _ in bucket])
            self._pg.broadcast(buf, 0).wait()
            sent += buf.numel() * buf.element_size()
        return sent


class WeightReceiver:
    """A rollout worker's end: joins the sender's group and copies each broadcast into its model."""

    def __init__(self, host: str, port: int, rank: int, world: int, backend: str, device: torch.device | str):
        self.device = transport_device(backend, device)
        self._pg = _group(host, port, rank, world, backend)

    @torch.no_grad()
    def receive(self, model: torch.nn.Module) -> None:
        state = model.state_dict()  # views of the parameters: copying into them updates the model
        dtype = next(iter(state.values())).dtype
        for bucket in plan(state, dtype):
            buf = torch.empty(sum(s.numel() for _, s in bucket), dtype=dtype, device=self.device)
            self._pg.broadcast(buf, 0).wait()
            offset = 0
            for name, shape in bucket:
                n = shape.numel()
                state[name].copy_(buf[offset : offset + n].view(shape))
                offset += n


def _this_host() -> str:
    """This node's address as other nodes of a Ray cluster reach it (loopback without Ray)."""
    try:
        import ray

        if ray.is_initialized():
            return ray.util.get_node_ip_address()
    except ImportError:  # pragma: no cover - ray is a dependency
        pass
    return socket.gethostbyname("localhost")
