"""Engines: the host's loop with pluggable loss terms and hooks.

:class:`PluginEngine` subclasses ``torchreid.engine.Engine`` and overrides only
``forward_backward`` (the host's ``run()`` loop, evaluation, TensorBoard writer
and LR stepping stay the host's), ``save_model`` (plain numbers, atomic files,
hook state) and adds :meth:`PluginEngine.resume` for every registered network.

An engine is picked by name from the config (``engine.name``, or ``loss.name``
when empty) through :data:`ENGINES`, whose entries are builders called as
``builder(cfg, datamanager, model, optimizer, scheduler) -> PluginEngine``.
"""
import os.path as osp
from collections import namedtuple

import torch
from torchreid.reid import engine as host_engines
from torchreid.reid import metrics
from torchreid.reid.engine import Engine
from torchreid.reid.losses import CrossEntropyLoss, TripletLoss

from .checkpoint import load_checkpoint, plain, save_checkpoint
from .hooks import TeacherDistillationHook, optimizer_step
from .registry import Registry

ENGINES = Registry('engine')

LossTerm = namedtuple('LossTerm', ['name', 'weight', 'fn'])
LossTerm.__doc__ = """A weighted term of the main loss; ``fn(engine, batch, outputs) -> tensor``."""


def register_engine(name, builder=None):
    """Register an engine builder ``builder(cfg, datamanager, model, optimizer, scheduler)``."""
    if builder is None:
        return lambda b: register_engine(name, b)
    return ENGINES.register(name, builder)


class PluginEngine(Engine):
    """Host engine whose step is: hooks, forward, weighted loss terms, backward, hooks.

    Args:
        datamanager, model, optimizer, scheduler, use_gpu: as torchreid's engines.
        loss_terms (list[LossTerm]): terms of the main loss; a zero weight skips a term.
        hooks (list[Hook]): see :class:`plugins.hooks.Hook` for the stage order.
        metric_fns (dict): ``name -> fn(engine, batch, outputs)`` logged each step, not trained.
    """

    def __init__(self, datamanager, model, optimizer, scheduler=None, use_gpu=True,
                 loss_terms=(), hooks=(), metric_fns=None):
        super().__init__(datamanager, use_gpu)
        self.device = torch.device('cuda' if self.use_gpu else 'cpu')
        self.model = model.to(self.device)
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.register_model('model', model, optimizer, scheduler)
        self.loss_terms = list(loss_terms)
        self.metric_fns = dict(metric_fns or {})
        self.hooks = []
        for hook in hooks:
            self.add_hook(hook)

    def add_hook(self, hook):
        if any(h.name == hook.name for h in self.hooks) or hook.name in self._models:
            raise KeyError('A hook or network named {!r} is already attached'.format(hook.name))
        hook.attach(self)
        self.hooks.append(hook)

    def parse_batch(self, data):
        """The loader's dict with images and identities moved to the engine's device."""
        batch = dict(data)
        batch['img'] = data['img'].to(self.device, non_blocking=True)
        batch['pid'] = data['pid'].to(self.device, non_blocking=True)
        return batch

    def model_outputs(self, batch):
        """The training forward: torchreid's ``model(images)`` output.

        Engines whose losses need more than the model contract's output (attention
        maps, say) override this and keep the extras in ``batch``.
        """
        return self.model(batch['img'])

    def forward_backward(self, data):
        batch = self.parse_batch(data)
        log = {}
        for hook in self.hooks:
            log.update(hook.before_step(self, batch) or {})
        outputs = self.model_outputs(batch)
        for hook in self.hooks:
            log.update(hook.after_forward(self, batch, outputs) or {})
        terms = {t.name: t.weight * t.fn(self, batch, outputs) for t in self.loss_terms if t.weight}
        for hook in self.hooks:
            terms.update(hook.loss_terms(self, batch, outputs))
        optimizer_step(self.optimizer, sum(terms.values()))
        for hook in self.hooks:
            log.update(hook.after_step(self, batch, outputs) or {})
        summary = {name: value.item() for name, value in terms.items()}
        summary.update(log)
        with torch.no_grad():
            summary.update({name: float(fn(self, batch, outputs))
                            for name, fn in self.metric_fns.items()})
        return summary

    def save_model(self, epoch, rank1, save_dir, is_best=False):
        """Save every registered network; the main one also carries the hooks' state."""
        for name in self.get_model_names():
            optim, sched = self._optims[name], self._scheds[name]
            state = {
                'state_dict': self._models[name].state_dict(),
                'epoch': epoch + 1,
                'rank1': plain(rank1),
                'optimizer': optim.state_dict() if optim is not None else None,
                'scheduler': sched.state_dict() if sched is not None else None,
            }
            if name == 'model':
                state['hooks'] = {h.name: h.state_dict() for h in self.hooks}
            save_checkpoint(state, osp.join(save_dir, name), is_best=is_best)

    def resume(self, fpath):
        """Restore every network, optimiser, scheduler and hook from a checkpoint of the main model.

        ``fpath`` is ``<save_dir>/model/model.pth.tar-N``; the other networks are read
        from ``<save_dir>/<name>/model.pth.tar-N``. Returns the epoch to start from.
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
            if self._scheds[name] is not None and ckpt.get('scheduler'):
                self._scheds[name].load_state_dict(ckpt['scheduler'])
            if name == 'model':
                start_epoch = ckpt['epoch']
                for hook in self.hooks:
                    hook.load_state_dict(ckpt.get('hooks', {}).get(hook.name, {}))
            print('Resumed {!r} from "{}" (epoch {})'.format(name, path, ckpt['epoch']))
        return start_epoch


def unwrap_model(model):
    """The network inside a (Distributed)DataParallel wrapper, or the model itself."""
    return getattr(model, 'module', model)


def logits_of(outputs):
    """Identity logits of a torchreid training output (softmax: logits; triplet: (logits, feats))."""
    return outputs[0] if isinstance(outputs, tuple) else outputs


def cross_entropy_term(engine, weight, label_smooth, logits_fn=logits_of):
    """Label-smoothed cross-entropy (torchreid's ``CrossEntropyLoss``) on the identity logits."""
    criterion = CrossEntropyLoss(engine.datamanager.num_train_pids, use_gpu=engine.use_gpu,
                                 label_smooth=label_smooth)
    return LossTerm('loss_x', weight, lambda e, batch, outputs: e.compute_loss(
        criterion, logits_fn(outputs), batch['pid']))


def triplet_term(engine, weight, margin):
    """Batch-hard triplet loss (torchreid's ``TripletLoss``) on the features of ``(logits, feats)``."""
    criterion = TripletLoss(margin=margin)
    return LossTerm('loss_t', weight, lambda e, batch, outputs: e.compute_loss(
        criterion, outputs[1], batch['pid']))


def accuracy(engine, batch, outputs):
    """Top-1 training accuracy in percent, as the host's engines log it."""
    return metrics.accuracy(logits_of(outputs), batch['pid'])[0]


def reid_loss_terms(cfg, engine):
    """The ReID terms ``loss.name`` asks for: CE ('softmax'), or triplet + CE ('triplet')."""
    smooth = cfg.loss.softmax.label_smooth
    if cfg.loss.name == 'softmax':
        return [cross_entropy_term(engine, 1.0, smooth)]
    return [triplet_term(engine, cfg.loss.triplet.weight_t, cfg.loss.triplet.margin),
            cross_entropy_term(engine, cfg.loss.triplet.weight_x, smooth)]


@register_engine('softmax')
@register_engine('triplet')
def build_reid_engine(cfg, datamanager, model, optimizer, scheduler):
    """torchreid's softmax / triplet engines on the plugin loop (terms: :func:`reid_loss_terms`)."""
    engine = PluginEngine(datamanager, model, optimizer, scheduler, use_gpu=cfg.use_gpu,
                          metric_fns={'acc': accuracy})
    engine.loss_terms = reid_loss_terms(cfg, engine)
    return engine


def _build_video_engine(cfg, datamanager, model, optimizer, scheduler):
    """Video re-id keeps the host's engines, exactly as upstream ``main.py`` builds them."""
    common = dict(optimizer=optimizer, scheduler=scheduler, use_gpu=cfg.use_gpu,
                  label_smooth=cfg.loss.softmax.label_smooth)
    if cfg.loss.name == 'softmax':
        return host_engines.VideoSoftmaxEngine(datamanager, model,
                                               pooling_method=cfg.video.pooling_method, **common)
    return host_engines.VideoTripletEngine(datamanager, model, margin=cfg.loss.triplet.margin,
                                           weight_t=cfg.loss.triplet.weight_t,
                                           weight_x=cfg.loss.triplet.weight_x, **common)


def build_engine(cfg, datamanager, model, optimizer, scheduler):
    """The engine named by the config, plus the config-driven teacher hook."""
    if cfg.data.type == 'video':
        return _build_video_engine(cfg, datamanager, model, optimizer, scheduler)
    engine = ENGINES.get(cfg.engine.name or cfg.loss.name)(cfg, datamanager, model, optimizer,
                                                           scheduler)
    if cfg.teacher.weights:
        engine.add_hook(TeacherDistillationHook.from_checkpoint(
            cfg.teacher.model, cfg.teacher.weights, datamanager.num_train_pids,
            weight=cfg.teacher.weight, temperature=cfg.teacher.temperature,
            mode=cfg.teacher.mode))
    return engine
