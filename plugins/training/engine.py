"""Engines: the host's loop with pluggable loss terms and hooks.

:class:`PluginEngine` subclasses ``torchreid.engine.Engine``: the host's
``register_model``, evaluation, TensorBoard writer and LR stepping stay; the
step (``forward_backward``), the epoch loop (``run``/``train``: distributed,
mixed precision, sync-free logging, non-finite skipping, stop on signals) and
checkpointing (``save_model``/``resume`` of every network, mid-epoch included)
are ours.

Loss terms live in :mod:`plugins.training.terms`, engine builders (picked by the
config's ``engine.name``) in :mod:`plugins.training.builders`.
"""
import datetime
import os.path as osp
import signal
import time

import torch
from torch.utils.tensorboard import SummaryWriter
from torchreid.reid.engine import Engine
from torchreid.reid.utils import visualize_ranked_results

from plugins import distributed
from plugins.evaluation import protocol as evaluation
from plugins.training.checkpoint import load_checkpoint, plain, save_checkpoint
from plugins.training.device_flags import DeviceMeter, StepFlags, read_later
from plugins.training.precision import Precision, is_fused, poison_gradients, step_unless, use_fused_step
from plugins.training.resilience import (NonFiniteLossError, StopOnSignal, TrainingInterrupted, checkpoint_name,
                         nondeterministic_kernels_reported, rng_state, set_rng_state)

LR_STEPS = ('epoch', 'iteration')


class PluginEngine(Engine):
    """Host engine whose step is: hooks, forward, weighted loss terms, backward, hooks.

    The host's data managers, ``register_model``, evaluation, TensorBoard writer
    and LR stepping are kept; the epoch loop is ours (:meth:`run`, :meth:`train`)
    because it adds what the host's lacks:

    * data parallel training under torchrun (:mod:`plugins.distributed`): every
      registered network starts from rank 0's weights and its gradients are
      averaged over the ranks after each backward
      (:class:`~plugins.distributed.GradientAverager`), whatever the step does
      with it; rank 0 alone logs, evaluates, saves;
    * mixed precision (``amp``: :mod:`plugins.training.precision`) for every network's step;
    * no host synchronisation per step: losses are summed on the device, and the
      non-finite and gradient-pattern flags kept there, all read at ``print_freq``
      (optimisers use fused kernels that skip a step on a device flag);
    * a step with a non-finite loss term is skipped and counted; when a read finds
      that ``nonfinite_patience`` such steps came in a row, a checkpoint is saved
      and :class:`~plugins.training.resilience.NonFiniteLossError` names the term;
    * SIGINT/SIGTERM save a checkpoint of everything (with the iteration and RNG
      state) and raise :class:`~plugins.training.resilience.TrainingInterrupted`; resuming
      from it continues the same epoch where it stopped.

    Args:
        datamanager, model, optimizer, scheduler, use_gpu: as torchreid's engines.
        loss_terms (list[LossTerm]): terms of the main loss; a zero weight skips a term.
            The main loss steps ``main_optimizers`` (the model's optimiser; engines that
            train several networks jointly append theirs).
        hooks (list[Hook]): see :class:`plugins.training.hooks.Hook` for the stage order.
        metric_fns (dict): ``name -> fn(engine, batch, outputs)`` logged each step, not trained.
        amp (str): '' (fp32), 'bf16' or 'fp16'.
        nonfinite_patience (int): non-finite steps in a row before stopping (checked
            when the flags are read, every ``print_freq`` steps); 0 disables the check.
        channels_last (bool): NHWC memory format for every registered network and the batches.
        lr_step (str): when every network's scheduler steps: 'epoch' (after each epoch, as the
            host's engines) or 'iteration' (at the start of each step, before its forward, as
            methods whose official schedules count iterations, such as DG-Net).
    """

    STOP_CHECK_STEPS = 10

    def __init__(self, datamanager, model, optimizer, scheduler=None, use_gpu=True,
                 loss_terms=(), hooks=(), metric_fns=None, amp='', nonfinite_patience=10,
                 channels_last=False, lr_step='epoch'):
        super().__init__(datamanager, use_gpu)
        if lr_step not in LR_STEPS:
            raise ValueError('lr_step {!r} is not one of {}'.format(lr_step, list(LR_STEPS)))
        self.lr_step = lr_step
        if self.use_gpu:
            self.device = torch.device('cuda', torch.cuda.current_device())
        else:
            self.device = torch.device('cpu')
        self.precision = Precision(amp, self.device)
        self.nonfinite_patience = nonfinite_patience
        self.average_gradients = distributed.GradientAverager()
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.model = self.register_model('model', model, optimizer, scheduler)
        self.main_optimizers = [optimizer]
        self.loss_terms = list(loss_terms)
        self.metric_fns = dict(metric_fns or {})
        self.hooks = []
        for hook in hooks:
            self.add_hook(hook)
        self.nonfinite_in_a_row = 0
        self.skipped_steps = 0
        self.skipped_images = 0
        self._flags = StepFlags()
        self._resume_point = None
        self._epoch_rng = None
        self._stop = StopOnSignal()
        self._shared_stop = None  # reads the ranks' last shared stop flags
        self._kernels_reported = False  # train.deterministic: the first step's report is printed
        self.batch_idx = 0
        self.save_dir = 'log'
        self.metrics_dir = ''  # run()'s save_dir: where metrics.jsonl goes

    def register_model(self, name='model', model=None, optim=None, sched=None):
        """The host's registration, on the engine's device, with rank 0's weights under
        torchrun and the optimiser on fused kernels where it has them; returns the network."""
        model = model.to(self.device, memory_format=self.memory_format)
        distributed.broadcast_module(model)
        if optim is not None:
            use_fused_step(optim)
        super().register_model(name, model, optim, sched)
        return model

    def add_hook(self, hook):
        if any(h.name == hook.name for h in self.hooks) or hook.name in self._models:
            raise KeyError('A hook or network named {!r} is already attached'.format(hook.name))
        hook.attach(self)
        self.hooks.append(hook)

    def parse_batch(self, data):
        """The loader's dict with images and identities moved to the engine's device."""
        batch = dict(data)
        batch['img'] = data['img'].to(self.device, non_blocking=True,
                                      memory_format=self.memory_format)
        batch['pid'] = data['pid'].to(self.device, non_blocking=True)
        return batch

    def model_outputs(self, batch):
        """The training forward: torchreid's ``model(images)`` output.

        Engines whose losses need more than the model contract's output (attention
        maps, say) override this and return a :class:`~plugins.training.step.Step` subclass
        holding the output and the extras; the batch is never written.
        """
        return self.model(batch['img'])

    def finish_outputs(self, batch, outputs):
        """The rest of the forward, after the hooks' ``after_forward`` updates (an adversary's
        step); returns the outputs the loss terms read. Nothing by default. A method whose
        official step computes part of its forward after such an update (DG-Net: the
        generator side after the D step) does it here, which also frees the hooks' graphs
        before its own are built."""
        return outputs

    def forward_backward(self, data):
        """One training step; returns ``{name: detached tensor}`` (read only when logging)."""
        if self.lr_step == 'iteration':
            self.update_lr()
        batch = self.parse_batch(data)
        if 'skipped_images' in data:  # unreadable files replaced (data.skip_bad_images)
            self._flags.record_skipped_images(data['skipped_images'].sum())
        log = {}
        with self.precision.autocast():
            for hook in self.hooks:
                log.update(hook.before_step(self, batch) or {})
            outputs = self.model_outputs(batch)
            for hook in self.hooks:
                log.update(hook.after_forward(self, batch, outputs) or {})
            outputs = self.finish_outputs(batch, outputs)
            terms = {}
            for term in self.loss_terms:
                weight = term.weight(self) if callable(term.weight) else term.weight
                if weight:
                    terms[term.name] = weight * term.fn(self, batch, outputs)
            for hook in self.hooks:
                terms.update(hook.loss_terms(self, batch, outputs))
        self.optimizer_step(self.main_optimizers, terms)
        with self.precision.autocast():
            for hook in self.hooks:
                log.update(hook.after_step(self, batch, outputs) or {})
        summary = {name: value.detach() for name, value in terms.items()}
        summary.update(log)
        with torch.no_grad():
            summary.update({name: fn(self, batch, outputs) for name, fn in self.metric_fns.items()})
        self._flags.end_step()
        return summary

    def optimizer_step(self, optimizers, terms):
        """Backward of ``sum(terms.values())``, gradients averaged over the ranks, and a step
        of ``optimizers`` (one optimiser or a list stepped together), skipped when a term
        is non-finite on any rank.

        Every network's update goes through here (hooks included), so mixed
        precision, distributed averaging, rank-consistent skipping and counting apply
        to all of them. A joint step uses the gradient scaler of the first
        optimiser's network. Nothing is read on the host: fused optimisers skip on
        the device flag (under fp16 the gradients are made NaN, so that GradScaler
        skips the step as an overflow and lowers its scale), and the flags
        are read with the logged losses (:meth:`read_step_flags`). Only optimisers
        without fused kernels (RMSprop, RAdam) read the flag, once per step.
        """
        optimizers = list(optimizers) if isinstance(optimizers, (list, tuple)) else [optimizers]
        names = list(terms)
        loss = sum(terms.values())
        scaler = self.precision.scaler(self._network_of(optimizers[0]))
        skip = read_skip = None
        if self.nonfinite_patience:
            flags = torch.stack([~torch.isfinite(terms[n].detach()).all() for n in names])
            flags = distributed.all_reduce_max(flags.to(torch.uint8))
            self._flags.record_terms(names, flags)
            skip = flags.amax().bool()
            if scaler is None and not all(is_fused(o) for o in optimizers):
                read_skip = read_later(skip)
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        with self.precision.full_precision():
            (scaler.scale(loss) if scaler is not None else loss).backward()
            self._flags.record_mismatch(self.average_gradients(
                p for optimizer in optimizers for group in optimizer.param_groups
                for p in group['params']))
            skipped_on_host = read_skip is not None and read_skip()
            if scaler is not None and skip is not None:
                poison_gradients(optimizers, skip)  # the scaler then skips it as an overflow
            for optimizer in optimizers:
                if scaler is not None:
                    scaler.step(optimizer)
                elif skip is not None and is_fused(optimizer):
                    step_unless(optimizer, skip)
                elif not skipped_on_host:
                    optimizer.step()
            if scaler is not None:
                scaler.update()

    def _network_of(self, optimizer):
        for name, optim in self._optims.items():
            if optim is optimizer:
                return name
        return 'model'

    def read_step_flags(self):
        """Read the device flags of the steps since the last read (with the logged losses).

        Updates ``skipped_steps`` and ``nonfinite_in_a_row``. Raises, after saving a
        checkpoint, :class:`~plugins.training.resilience.NonFiniteLossError` when
        ``nonfinite_patience`` non-finite steps came in a row, and ``RuntimeError``
        when some parameter had a gradient on some ranks only (their weights would
        drift apart). Called on every rank: the flags agree, and saving is collective.
        """
        flags = self._flags.read()
        if flags is None:
            return
        self.skipped_steps += flags['skipped']
        self.skipped_images += flags['skipped_images']
        self.nonfinite_in_a_row = flags['streak']
        if flags['mismatch']:
            raise RuntimeError(
                'Some parameters had a gradient on some ranks but not on others in a step '
                'before epoch {}, iteration {}: the step must use the same parameters on '
                'every rank (train without torchrun to check a data-dependent branch).'.format(
                    self.epoch + 1, self.batch_idx + 1))
        if self.nonfinite_patience and flags['worst'] >= self.nonfinite_patience:
            path = self.save_model(self.epoch, 0, self.save_dir, iteration=self.batch_idx + 1)
            raise NonFiniteLossError(
                'Loss term(s) {} non-finite in {} steps in a row (before epoch {}, iteration {}); '
                'stopped after saving "{}". Lower train.lr, check the data, or try '
                'train.amp \'\' (train.nonfinite_patience sets the limit).'.format(
                    flags['terms'], flags['worst'], self.epoch + 1, self.batch_idx + 1, path))

    def run(self, save_dir='log', max_epoch=0, start_epoch=0, print_freq=10, fixbase_epoch=0,
            open_layers=None, start_eval=0, eval_freq=-1, test_only=False, **test_kwargs):
        """The host's ``Engine.run`` (same arguments and schedule of tests and saves)."""
        if test_kwargs.get('visrank') and not test_only:
            raise ValueError('visrank can be set to True only if test_only=True')
        self.save_dir = self.metrics_dir = save_dir
        if test_only:
            if distributed.is_main():
                self.test(save_dir=save_dir, **test_kwargs)
            distributed.barrier()
            return
        if self.writer is None and distributed.is_main():
            self.writer = SummaryWriter(log_dir=save_dir)
        time_start = time.time()
        self.start_epoch, self.max_epoch = start_epoch, max_epoch
        self.epoch = max(start_epoch, max_epoch) - 1
        print('=> Start training')
        with self._stop:
            for self.epoch in range(start_epoch, max_epoch):
                self.train(print_freq=print_freq, fixbase_epoch=fixbase_epoch,
                           open_layers=open_layers)
                if (self.epoch + 1) >= start_eval and eval_freq > 0 \
                        and (self.epoch + 1) % eval_freq == 0 and (self.epoch + 1) != max_epoch:
                    self._test_and_save(save_dir, test_kwargs)
            if max_epoch > 0:
                print('=> Final test')
                self._test_and_save(save_dir, test_kwargs)
        print('Elapsed {}'.format(datetime.timedelta(seconds=round(time.time() - time_start))))
        if self.writer is not None:
            self.writer.close()

    @torch.no_grad()
    def test(self, dist_metric='euclidean', normalize_feature=False, visrank=False, visrank_topk=10,
             save_dir='', use_metric_cuhk03=False, ranks=(1, 5, 10, 20), rerank=False, flip=False,
             aqe=False, aqe_k=5, aqe_alpha=3.0, rerank_k1=20, rerank_k2=6, rerank_lambda=0.3,
             rerank_chunk=0):
        """The host's test on every target dataset, plus ``test.flip``, ``test.aqe`` and
        re-ranking (chunked, on the engine's device) in any run. Each evaluation is appended
        to ``<save_dir>/metrics.jsonl``. Returns the last target's Rank-1, as the host's does."""
        options = {'dist_metric': dist_metric, 'normalize_feature': normalize_feature,
                   'flip': flip, 'aqe': aqe, 'aqe_k': aqe_k, 'aqe_alpha': aqe_alpha,
                   'rerank': rerank, 'rerank_k1': rerank_k1, 'rerank_k2': rerank_k2,
                   'rerank_lambda': rerank_lambda, 'rerank_chunk': rerank_chunk}
        evaluation.check_options(ranks=list(ranks), **{
            k: v for k, v in options.items() if k in evaluation.OPTION_CHECKS})
        self.set_model_mode('eval')
        save_dir = save_dir or self.metrics_dir
        rank1 = 0.0
        for name in self.test_loader:
            domain = 'source' if name in self.datamanager.sources else 'target'
            print('##### Evaluating {} ({}) #####'.format(name, domain))
            query = self._eval_features(self.test_loader[name]['query'], flip)
            gallery = self._eval_features(self.test_loader[name]['gallery'], flip)
            distmat = evaluation.distances(query[0], gallery[0], device=self.device, **{
                k: v for k, v in options.items() if k != 'flip'})
            result = evaluation.rank_metrics(distmat, query, gallery, use_metric_cuhk03)
            print('** Results **\nmAP: {:.1%}'.format(result['mAP']) +
                  ('\nmINP: {:.1%}'.format(result['mINP']) if 'mINP' in result else '') +
                  '\nCMC curve' + ''.join('\nRank-{:<3}: {:.1%}'.format(r, result['cmc'][r - 1])
                                          for r in ranks))
            rank1 = float(result['cmc'][0])
            if self.writer is not None:
                self.writer.add_scalar('Test/{}/rank1'.format(name), rank1, self.epoch)
                self.writer.add_scalar('Test/{}/mAP'.format(name), result['mAP'], self.epoch)
            if save_dir:
                evaluation.append_metrics(save_dir, dict(
                    kind='test', epoch=self.epoch + 1,
                    iteration=(self.epoch + 1) * getattr(self, 'num_batches', 0), dataset=name,
                    mAP=result['mAP'], mINP=result.get('mINP'),
                    options=dict(options, cuhk03_metric=use_metric_cuhk03),
                    **{'rank{}'.format(r): float(result['cmc'][r - 1]) for r in ranks}))
            if visrank:
                visualize_ranked_results(
                    distmat, self.datamanager.fetch_test_loaders(name), self.datamanager.data_type,
                    width=self.datamanager.width, height=self.datamanager.height,
                    save_dir=osp.join(save_dir, 'visrank_' + name), topk=visrank_topk)
        return rank1

    def _eval_features(self, loader, flip):
        """(features on the CPU, pids, camids) of a test loader; with ``flip`` each feature is
        the mean of the image's and its mirror's."""
        features, pids, camids = [], [], []
        for data in loader:
            images, pid, camid = self.parse_data_for_eval(data)
            images = images.to(self.device, non_blocking=True)
            f = (evaluation.flip_averaged(self.extract_features, images,
                                          evaluation.flip_merge_of(self.model)) if flip
                 else self.extract_features(images))
            features.append(f.float().cpu())
            pids.append(torch.as_tensor(pid))
            camids.append(torch.as_tensor(camid))
        return torch.cat(features), torch.cat(pids).numpy(), torch.cat(camids).numpy()

    def _test_and_save(self, save_dir, test_kwargs):
        """Evaluate (rank 0) and save; a pending stop request saves first and skips the test."""
        if self._stop_requested(agree_now=True):
            self._interrupt(0)
        rank1 = self.test(save_dir=save_dir, **test_kwargs) if distributed.is_main() else 0
        distributed.barrier()
        path = self.save_model(self.epoch, rank1, save_dir)
        if self._stop_requested(agree_now=True):
            raise TrainingInterrupted(self._stop.signum, path)

    def train(self, print_freq=10, fixbase_epoch=0, open_layers=None):
        """One epoch. Resumes inside the epoch when the checkpoint was saved mid-epoch."""
        self.set_model_mode('train')
        self.two_stepped_transfer_learning(self.epoch, fixbase_epoch, open_layers)
        loader = self.train_loader
        if hasattr(loader.sampler, 'set_epoch'):
            loader.sampler.set_epoch(self.epoch)
        resume, self._resume_point = self._resume_point, None
        if resume is not None:  # the RNG state this epoch started from in the interrupted run
            set_rng_state(resume['epoch_rng'] if resume['iteration'] else resume['rng'])
        self._epoch_rng = rng_state()
        self.num_batches = len(loader)
        batches = iter(loader)  # draws the sampler's order and the workers' seeds
        first = 0
        if resume is not None and resume['iteration']:
            first = resume['iteration']
            for _ in range(first):  # the same images and augmentation draws as before
                next(batches)
            set_rng_state(resume['rng'])
        meter = DeviceMeter()
        tick = time.time()
        done = first
        for self.batch_idx, data in enumerate(batches, start=first):
            with nondeterministic_kernels_reported(once=not self._kernels_reported):
                meter.add(self.forward_backward(data))
            self._kernels_reported = True
            done = self.batch_idx + 1
            if done % print_freq == 0:
                tick = self._log(meter, done, tick)
            if self._stop_requested(done):
                self._interrupt(done)
        if meter.count:
            self._log(meter, done, tick)
        if self._stop_requested(done, agree_now=True):
            self._interrupt(done)
        if self.lr_step == 'epoch':
            self.update_lr()

    def _stop_requested(self, done=0, agree_now=False):
        """Whether a signal arrived (on any rank: all must stop at the same step).

        Under torchrun the ranks share their flags every ``STOP_CHECK_STEPS`` steps
        and act on the flags shared the time before, which reached the host long
        ago: no step waits for the device. ``agree_now`` (between epochs) shares and
        reads at once.
        """
        signum = self._stop.signum
        if distributed.is_distributed():
            if done % self.STOP_CHECK_STEPS and not agree_now:
                return False
            flag = torch.full((1,), signum or 0, device=self.device)
            if agree_now:
                agreed = distributed.all_reduce_max(flag).item()
            else:
                agreed = self._shared_stop() if self._shared_stop is not None else 0
                self._shared_stop = read_later(distributed.all_reduce_max(flag))
            signum = int(agreed) or None
            if signum is not None:
                self._stop.signum = signum
        if signum is not None:
            print('Received {}: saving a checkpoint'.format(signal.Signals(signum).name), flush=True)
        return signum is not None

    def _interrupt(self, iteration):
        """Save everything after ``iteration`` steps of this epoch (0: after it) and stop."""
        path = self.save_model(self.epoch, 0, self.save_dir, iteration=iteration)
        raise TrainingInterrupted(self._stop.signum, path)

    def _log(self, meter, done, tick):
        """Read the running sums and step flags (the only per-interval sync) and print/write them."""
        self.read_step_flags()
        averages = meter.read()
        now = time.time()
        step_time = (now - tick) / max(meter.count, 1)
        meter.reset()
        if not distributed.is_main():
            return now
        remaining = self.num_batches - done + (self.max_epoch - self.epoch - 1) * self.num_batches
        skipped = '\tskipped steps {}'.format(self.skipped_steps) if self.skipped_steps else ''
        if self.skipped_images:
            skipped += '\tskipped images {}'.format(self.skipped_images)
        print('epoch: [{}/{}][{}/{}]\ttime {:.3f}\teta {}\t{}{}\tlr {:.6f}'.format(
            self.epoch + 1, self.max_epoch, done, self.num_batches, step_time,
            datetime.timedelta(seconds=int(step_time * remaining)),
            '  '.join('{} {:.4f}'.format(k, v) for k, v in averages.items()),
            skipped, self.get_current_lr()), flush=True)
        if self.metrics_dir:
            evaluation.append_metrics(self.metrics_dir, dict(
                kind='train', epoch=self.epoch + 1,
                iteration=self.epoch * self.num_batches + done, lr=self.get_current_lr(),
                step_time=step_time, skipped_steps=self.skipped_steps,
                **{k: float(v) for k, v in averages.items()}))
        if self.writer is not None:
            n_iter = self.epoch * self.num_batches + done
            self.writer.add_scalar('Train/time', step_time, n_iter)
            self.writer.add_scalar('Train/lr', self.get_current_lr(), n_iter)
            self.writer.add_scalar('Train/skipped', self.skipped_steps, n_iter)
            for name, value in averages.items():
                self.writer.add_scalar('Train/' + name, value, n_iter)
        return now

    def save_model(self, epoch, rank1, save_dir, is_best=False, iteration=0):
        """Save every registered network (rank 0 only); returns the main model's path.

        After a finished epoch (``iteration`` 0) the file is ``model.pth.tar-<epoch+1>``;
        stopped after ``iteration`` steps of ``epoch`` it is ``model.pth.tar-<epoch>+iter<i>``
        and also holds the RNG state at the epoch's start, so a resume replays the
        epoch's batches exactly. The main checkpoint carries the hooks', the gradient
        scalers' and every rank's RNG state. Called on every rank (it gathers the
        RNG states); rank 0 writes.
        """
        epochs_done = epoch if iteration else epoch + 1
        name = checkpoint_name(epochs_done, iteration)
        path = osp.join(save_dir, 'model', name)
        rng = distributed.gather_objects(rng_state())  # every rank's, in rank order
        epoch_rng = distributed.gather_objects(self._epoch_rng) if iteration else None
        if not distributed.is_main():
            return path
        for net in self.get_model_names():
            optim, sched = self._optims[net], self._scheds[net]
            state = {
                'state_dict': self._models[net].state_dict(),
                'epoch': epochs_done,
                'iteration': iteration,
                'rank1': plain(rank1),
                'optimizer': optim.state_dict() if optim is not None else None,
                'scheduler': sched.state_dict() if sched is not None else None,
            }
            if net == 'model':
                state['hooks'] = {h.name: h.state_dict() for h in self.hooks}
                state['scalers'] = self.precision.state_dict()
                state['rng'] = rng
                if iteration:
                    state['epoch_rng'] = epoch_rng
            save_checkpoint(state, osp.join(save_dir, net), is_best=is_best, name=name)
        return path

    def resume(self, fpath):
        """Restore every network, optimiser, scheduler and hook from a checkpoint of the main model.

        ``fpath`` is ``<save_dir>/model/<file>``; the other networks are read from
        ``<save_dir>/<name>/<file>``. Returns the epoch to start from.
        """
        root, fname = osp.split(osp.abspath(fpath))
        root = osp.dirname(root)
        start_epoch = None
        for name in self.get_model_names():
            path = fpath if name == 'model' else osp.join(root, name, fname)
            ckpt = load_checkpoint(path)
            self._models[name].load_state_dict(ckpt['state_dict'])
            if self._optims[name] is not None and ckpt.get('optimizer'):
                self._optims[name].load_state_dict(ckpt['optimizer'])
                use_fused_step(self._optims[name])  # the saved groups' flags came with it
            if self._scheds[name] is not None and ckpt.get('scheduler'):
                self._scheds[name].load_state_dict(ckpt['scheduler'])
            if name == 'model':
                start_epoch = ckpt['epoch']
                for hook in self.hooks:
                    hook.load_state_dict(ckpt.get('hooks', {}).get(hook.name, {}))
                self.precision.load_state_dict(ckpt.get('scalers'))
                if 'rng' in ckpt:
                    self._resume_point = {'epoch': start_epoch, 'rng': _own(ckpt['rng']),
                                          'iteration': ckpt.get('iteration', 0),
                                          'epoch_rng': _own(ckpt.get('epoch_rng'))}
            where = ('epoch {}, iteration {}'.format(ckpt['epoch'] + 1, ckpt['iteration'])
                     if ckpt.get('iteration') else 'epoch {}'.format(ckpt['epoch']))
            print('Resumed {!r} from "{}" ({})'.format(name, path, where))
        return start_epoch


def _own(states):
    """This rank's entry of a per-rank list saved by :meth:`PluginEngine.save_model`
    (rank 0's when the run had fewer processes)."""
    if not states:
        return states
    rank = distributed.get_rank()
    return states[rank] if rank < len(states) else states[0]


class NoData:
    """What torchreid's ``Engine`` reads from a data manager, for an engine whose batches are
    fed by hand (``engine.forward_backward(batch)``): benchmarks, checks, tests."""

    def __init__(self, num_train_pids):
        self.train_loader, self.test_loader, self.sources = [], {}, []
        self.num_train_pids = num_train_pids
