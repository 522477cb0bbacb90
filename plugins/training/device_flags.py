"""What the training loop records on the device and reads together with the logged losses,
so that no step waits for the device: summed step values, non-finite and skipped steps,
gradient-pattern mismatches, and a flag copied to the host without blocking."""
import torch


class DeviceMeter:
    """Per-name sums of per-step values kept on their device; one transfer when read."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.sums, self.counts, self.count = {}, {}, 0

    def add(self, summary):
        self.count += 1
        for name, value in summary.items():
            value = torch.as_tensor(value).detach().float().reshape(())  # one number per name
            self.sums[name] = self.sums[name] + value if name in self.sums else value
            self.counts[name] = self.counts.get(name, 0) + 1

    def read(self):
        """Average of each name over the steps that logged it."""
        if not self.sums:
            return {}
        names = list(self.sums)
        device = self.sums[names[0]].device
        values = torch.stack([self.sums[n].to(device) / self.counts[n] for n in names])
        return dict(zip(names, values.tolist()))


class StepFlags:
    """Device-side record of the steps since the last read: which terms were non-finite,
    steps skipped, the longest run of skipped steps, gradient-pattern mismatches.

    Each step adds a few tiny device operations and no host read; :meth:`read`
    copies everything to the host at once.
    """

    def __init__(self):
        self.streak = None  # non-finite steps in a row so far (kept across reads)
        self._clear()

    def _clear(self):
        self.terms, self.step_bad, self.skipped, self.worst, self.mismatch = {}, None, None, None, None
        self.skipped_images = 0  # a sum of the loader's (CPU) counts

    def record_skipped_images(self, count):
        self.skipped_images = self.skipped_images + count

    @staticmethod
    def _max(a, b):
        return b if a is None else torch.maximum(a, b)

    def record_terms(self, names, flags):
        for name, flag in zip(names, flags):
            self.terms[name] = self._max(self.terms.get(name), flag)
        self.step_bad = self._max(self.step_bad, flags.amax().to(torch.int64))

    def record_mismatch(self, flag):
        if flag is not None:
            self.mismatch = self._max(self.mismatch, flag)

    def end_step(self):
        if self.step_bad is None:  # no checked update this step
            return
        bad, self.step_bad = self.step_bad, None
        self.streak = (bad if self.streak is None else (self.streak.to(bad.device) + 1) * bad)
        self.skipped = bad if self.skipped is None else self.skipped + bad
        self.worst = self._max(self.worst, self.streak)

    def read(self):
        """``{'skipped', 'streak', 'worst', 'mismatch', 'terms'}`` on the host, then start over;
        None when nothing was recorded."""
        if self.skipped is None and self.mismatch is None and not torch.is_tensor(self.skipped_images):
            return None
        names = sorted(self.terms)
        values = [self.skipped, self.streak, self.worst, self.mismatch] + [self.terms[n] for n in names]
        device = next((v.device for v in values if v is not None), torch.device('cpu'))
        host = torch.stack([torch.zeros((), dtype=torch.int64, device=device) if v is None
                            else v.to(device, torch.int64) for v in values]).tolist()
        skipped_images = int(self.skipped_images)
        self._clear()
        return {'skipped': host[0], 'streak': host[1], 'worst': host[2], 'mismatch': bool(host[3]),
                'terms': [n for n, flag in zip(names, host[4:]) if flag],
                'skipped_images': skipped_images}


def read_later(flag):
    """A function returning ``flag`` on the host, copied without blocking now.

    For optimisers without fused kernels. On CUDA the copy is queued with an event;
    reading it after the backward has been queued waits only for the forward.
    """
    if flag.device.type != 'cuda':
        return flag.item
    host = torch.empty(flag.shape, dtype=flag.dtype, pin_memory=True)
    host.copy_(flag, non_blocking=True)
    event = torch.cuda.Event()
    event.record()

    def read():
        event.synchronize()
        return host.item()
    return read
