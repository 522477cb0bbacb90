"""CASN (Consistent Attentive Siamese Networks, Zheng et al., CVPR 2019) for torchreid.

Registers, through ``plugins`` only:

* models ``casn_ide_resnet50`` and ``casn_pcb_resnet50`` (:mod:`.model`);
* engine ``casn`` (:mod:`.engine`): identification, identification-attention,
  verification and Siamese-attention losses (:mod:`.attention`);
* config node ``casn`` (:mod:`.config`);
* attention maps for ``tools/visualize.py``;
* benchmark section ``casn`` (:mod:`.benchmark`).

See ``projects/casn/README.md``.
"""
import plugins

from .attention import casn_attention_maps
from .config import add_casn_config
from .engine import build_casn_engine
from .model import casn_ide_resnet50, casn_pcb_resnet50

plugins.register_models({'casn_ide_resnet50': casn_ide_resnet50,
                         'casn_pcb_resnet50': casn_pcb_resnet50}, casn_attention_maps)
plugins.register_engine('casn', build_casn_engine)
plugins.register_config('casn', add_casn_config)
plugins.register_benchmark('casn', 'projects.casn.benchmark:run', 'projects.casn.benchmark:markdown')
