"""Distributed data-parallel training under ``torchrun`` (single or multi node).

Without torchrun's environment (``WORLD_SIZE`` unset or 1) every function here
is a no-op and training runs exactly as before. Under torchrun:

* :func:`init_from_env` starts the process group (NCCL on GPUs, gloo on CPU) and
  pins each rank to ``cuda:LOCAL_RANK``;
* ``train.batch_size`` stays the **global** batch: each rank loads
  ``batch_size / world_size`` images, and :class:`BatchShard` gives rank r the
  r-th contiguous slice of every global batch drawn by the configured sampler,
  so a PK batch (identities in runs of K) splits into whole identities, disjoint
  between ranks, and a pairwise batch into whole pairs;
* every network starts from rank 0's weights (:func:`broadcast_module`) and its
  gradients are averaged over the ranks after each backward
  (:class:`GradientAverager`), and losses that compare samples (batch-hard
  triplet) see the global batch through :func:`gather_with_grad`, so N processes
  train like one process on the global batch;
* only rank 0 logs, writes TensorBoard, evaluates and saves (:func:`is_main`).
"""
import datetime
import os
import random

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler


def is_distributed():
    return dist.is_available() and dist.is_initialized()


def get_world_size():
    return dist.get_world_size() if is_distributed() else 1


def get_rank():
    return dist.get_rank() if is_distributed() else 0


def get_local_rank():
    """This process's index on its node (torchrun's ``LOCAL_RANK``; 0 when not distributed)."""
    return int(os.environ.get('LOCAL_RANK', '0')) if is_distributed() else 0


def is_main():
    """True on the process that logs, evaluates and writes checkpoints."""
    return get_rank() == 0


def init_from_env(use_gpu):
    """Join the process group torchrun describes; returns the device this rank trains on.

    Returns ``None`` (nothing to do) when not launched by torchrun with more than
    one process.
    """
    if int(os.environ.get('WORLD_SIZE', '1')) <= 1:
        return None
    if not is_distributed():
        backend = 'nccl' if use_gpu else 'gloo'
        if use_gpu:  # before the group starts
            torch.cuda.set_device(local_device_index(int(os.environ.get('LOCAL_RANK', '0')),
                                                     torch.cuda.device_count()))
        # rank 0 alone evaluates (and generates synthreid) while the others wait at a
        # barrier: NCCL's 10-minute default would abort them on a large gallery
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(hours=2))
    return torch.device('cuda', torch.cuda.current_device()) if use_gpu else torch.device('cpu')


def local_device_index(local_rank, visible_devices):
    """The GPU index this rank uses: ``LOCAL_RANK`` among the visible GPUs, or the only one
    when the launcher shows each process a single GPU (SLURM, some schedulers)."""
    if visible_devices == 1:
        return 0
    if 0 <= local_rank < visible_devices:
        return local_rank
    raise RuntimeError('LOCAL_RANK={} but this process sees {} GPU(s) (CUDA_VISIBLE_DEVICES={!r}): '
                       'launch at most one process per visible GPU, or show each process one GPU'
                       .format(local_rank, visible_devices, os.environ.get('CUDA_VISIBLE_DEVICES')))


def shutdown():
    """Leave the process group (no-op when not distributed)."""
    if is_distributed():
        dist.destroy_process_group()


def barrier():
    if is_distributed():
        dist.barrier()


def per_rank_batch(batch_size):
    """The images each rank loads for a global batch of ``batch_size``."""
    n = get_world_size()
    if batch_size % n:
        raise ValueError('train.batch_size={} (the global batch) is not divisible by the {} '
                         'processes'.format(batch_size, n))
    return batch_size // n


def broadcast_module(module, src=0):
    """Copy rank ``src``'s parameters and buffers into ``module`` on every rank, so that
    networks trained with :class:`GradientAverager` start (and stay) equal."""
    if not is_distributed():
        return
    with torch.no_grad():
        for tensor in list(module.parameters()) + list(module.buffers()):
            data = tensor.detach()
            buffer = data if data.is_contiguous() else data.contiguous()
            dist.broadcast(buffer, src)
            if buffer is not data:
                data.copy_(buffer)


class GradientAverager:
    """Averages gradients over the ranks after a backward: one all-reduce, no host read.

    Used for every network instead of ``DistributedDataParallel``, because the
    engines use networks in ways DDP's wrapper cannot follow: calls outside its
    forward (CASN's verifier and Grad-CAM passes, API-Net's pair interaction),
    several calls per backward (DG-Net), parameters without a gradient in a step
    (zero-weight ablations, frozen layers during ``fixbase_epoch``). Here it does
    not matter where or how often a network ran: after the backward, every
    trainable parameter's gradient is summed over the ranks and divided by the
    world size.

    A parameter without a gradient on this rank keeps ``None`` (so optimisers skip
    it, as in one process); one with a gradient here counts as zero on the ranks
    that have none. The engines' steps use the same parameters on every rank, so
    the pattern agrees; the call returns a device flag, raised when some
    parameter had a gradient on some ranks but not all (they would drift apart),
    which the engine reads at its next log. Which parameters have a gradient is
    known on the host; its device copy is made once per pattern and cached.
    """

    def __init__(self):
        self._presence = {}

    def __call__(self, parameters):
        """Average in place; returns the mismatch flag (a 0-dim device bool), or None
        when not distributed."""
        params = [p for p in parameters if p.requires_grad]
        if not is_distributed() or not params:
            return None
        pattern = tuple(p.grad is not None for p in params)
        device = params[0].device
        presence = self._presence.get((pattern, device))
        if presence is None:  # a host-to-device copy, once per pattern (the first step)
            presence = torch.tensor(pattern, dtype=torch.float32, device=device)
            self._presence[(pattern, device)] = presence
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float()
                          for p in params] + [presence])
        dist.all_reduce(flat)
        counts = flat[-len(params):]
        grads = flat[:-len(params)].div_(get_world_size()).split([p.numel() for p in params])
        for p, grad in zip(params, grads):
            if p.grad is not None:
                p.grad.copy_(grad.view_as(p))  # keeps the gradient's layout (channels_last)
        return ((counts > 0) & (counts < get_world_size())).any()


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 (equal sizes on every rank) whose backward returns this rank's
    slice of the gradient summed over ranks."""

    @staticmethod
    def forward(ctx, tensor):
        parts = [torch.empty_like(tensor) for _ in range(get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        ctx.size = tensor.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad)
        start = get_rank() * ctx.size
        return grad[start:start + ctx.size]


class _AllReduceWithGrad(torch.autograd.Function):
    """Sum over ranks whose backward sums the gradients over ranks (each rank's loss uses
    the total)."""

    @staticmethod
    def forward(ctx, tensor):
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def all_reduce_with_grad(tensor):
    """``tensor`` summed over the ranks, differentiable (synced batch statistics)."""
    return _AllReduceWithGrad.apply(tensor) if is_distributed() else tensor


def gather_with_grad(tensor):
    """Concatenate ``tensor`` from every rank in rank order; gradients flow back to each rank.

    Each rank computes the same global loss; the backward sums the ranks'
    gradients for the local slice and :class:`GradientAverager` divides by the
    world size again, so parameters get exactly the single-process gradient.
    """
    if not is_distributed():
        return tensor
    if isinstance(tensor, (tuple, list)):  # deep supervision: several feature tensors
        return type(tensor)(gather_with_grad(t) for t in tensor)
    return _GatherWithGrad.apply(tensor)


def gather_objects(obj):
    """``[obj of rank 0, obj of rank 1, ...]`` (collective; a one-item list when not distributed)."""
    if not is_distributed():
        return [obj]
    out = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_max(tensor):
    """Element-wise maximum over ranks, in place (a flag raised on any rank is raised on all)."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


class _seeded_host_rngs:
    """Seed python, numpy and torch RNGs for a block and restore them afterwards.

    Used to draw an epoch's global order identically on every rank, whatever the
    sampler, without disturbing the training RNG streams.
    """

    def __init__(self, seed):
        self.seed = seed

    def __enter__(self):
        self.saved = random.getstate(), np.random.get_state()
        self.torch_rngs = torch.random.fork_rng(
            devices=range(torch.cuda.device_count()) if torch.cuda.is_initialized() else [])
        self.torch_rngs.__enter__()
        random.seed(self.seed)
        np.random.seed(self.seed % 2 ** 32)
        torch.manual_seed(self.seed)

    def __exit__(self, *exc):
        self.torch_rngs.__exit__(*exc)
        random.setstate(self.saved[0])
        np.random.set_state(self.saved[1])


class BatchShard(Sampler):
    """Rank ``r``'s slice of every global batch of a sampler.

    Args:
        sampler: any training sampler; it is drawn with the global batch size.
        batch_size (int): the global batch; must split evenly over the ranks.
        seed (int): with the epoch, seeds the host RNGs while the global order is drawn
            (and is passed on to ``sampler.set_epoch`` when it has one), so every rank
            sees the same global batches and each epoch reshuffles.
        rank, num_replicas: default to the process group's.

    Only whole global batches are used (the train loader drops the last one anyway).
    """

    def __init__(self, sampler, batch_size, seed=0, rank=None, num_replicas=None):
        self.sampler = sampler
        self.world_size = get_world_size() if num_replicas is None else num_replicas
        self.rank = get_rank() if rank is None else rank
        self.batch_size = batch_size
        self.local_batch = batch_size // self.world_size
        if batch_size % self.world_size:
            raise ValueError('global batch {} is not divisible by {} ranks'.format(
                batch_size, self.world_size))
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def __iter__(self):
        if hasattr(self.sampler, 'set_epoch'):
            self.sampler.set_epoch(self.epoch)
        with _seeded_host_rngs(self.seed * 100003 + self.epoch):
            order = list(self.sampler)
        self.epoch += 1
        start = self.rank * self.local_batch
        for b in range(len(order) // self.batch_size):
            base = b * self.batch_size + start
            yield from order[base:base + self.local_batch]

    def __len__(self):
        return len(self.sampler) // self.batch_size * self.local_batch
