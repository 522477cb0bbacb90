"""SCAL (Self-Critical Attention Learning, Chen et al., ICCV 2019) for torchreid.

Registers, through ``plugins`` only:

* models ``scal_spatial_resnet50`` and ``scal_channel_resnet50`` (:mod:`.model`);
* engine ``scal`` (:mod:`.engine`): rewards, ReID terms, critic via ``plugins.CriticUpdateHook``;
* config node ``scal`` (:mod:`.config`);
* attention maps for ``tools/visualize.py``;
* benchmark section ``scal`` (:mod:`.benchmark`).

See ``projects/scal/README.md``.
"""
import plugins

from .config import add_scal_config
from .engine import build_scal_engine
from .model import scal_attention_maps, scal_channel_resnet50, scal_spatial_resnet50

plugins.register_models({'scal_spatial_resnet50': scal_spatial_resnet50,
                         'scal_channel_resnet50': scal_channel_resnet50}, scal_attention_maps)
plugins.register_engine('scal', build_scal_engine)
plugins.register_config('scal', add_scal_config)
plugins.register_benchmark('scal', 'projects.scal.benchmark:run', 'projects.scal.benchmark:markdown')
