"""Engine builders: the config names an engine (``engine.name``, or ``loss.name`` when empty)
in :data:`plugins.registry.ENGINES`, whose entries are called as ``builder(cfg, datamanager,
model, optimizer, scheduler) -> PluginEngine``; :func:`build_engine` adds the config-driven
teacher."""
from torchreid.reid import engine as host_engines

from plugins.registry import ENGINES, register_engine
from plugins.training.engine import PluginEngine
from plugins.training.hooks import TeacherDistillationHook
from plugins.training.terms import accuracy, reid_loss_terms


def engine_options(cfg):
    """:class:`PluginEngine` keyword arguments read from the config (every engine builder passes them)."""
    return {'use_gpu': cfg.use_gpu, 'amp': cfg.train.amp, 'channels_last': cfg.train.channels_last,
            'nonfinite_patience': cfg.train.nonfinite_patience}


@register_engine('softmax')
@register_engine('triplet')
def build_reid_engine(cfg, datamanager, model, optimizer, scheduler):
    """torchreid's softmax / triplet engines on the plugin loop (terms: :func:`reid_loss_terms`)."""
    engine = PluginEngine(datamanager, model, optimizer, scheduler, **engine_options(cfg),
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
    """The engine named by the config, plus the config-driven teacher hook (unless the
    engine already built its own from the ``teacher`` keys)."""
    if cfg.data.type == 'video':
        return _build_video_engine(cfg, datamanager, model, optimizer, scheduler)
    engine = ENGINES.get(cfg.engine.name or cfg.loss.name)(cfg, datamanager, model, optimizer,
                                                           scheduler)
    if cfg.teacher.weights and not any(isinstance(h, TeacherDistillationHook) for h in engine.hooks):
        engine.add_hook(TeacherDistillationHook.from_checkpoint(
            cfg.teacher.model, cfg.teacher.weights, datamanager.num_train_pids,
            weight=cfg.teacher.weight, temperature=cfg.teacher.temperature,
            mode=cfg.teacher.mode))
    return engine
