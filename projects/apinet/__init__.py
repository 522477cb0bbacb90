"""API-Net (Attentive Pairwise Interaction, Zhuang et al., AAAI 2020) for person re-identification.

Registers, through ``plugins`` only:

* models ``apinet_resnet50`` and ``apinet_resnet101`` (:mod:`.model`);
* engine ``apinet`` (:mod:`.engine`): pair mining, pair losses, optional triplet + BNNeck ID loss;
* config node ``apinet`` (:mod:`.config`);
* benchmark section ``apinet`` (:mod:`.benchmark`): pair construction against the loop
  reference, and the train-step cost against torchreid's ResNet-50;
* official check ``apinet`` (:mod:`.official`, ``tools/check_official.py``): our networks,
  pair mining and losses against PeiqinZhuang/API-Net, imported from the user's clone when
  the check runs (nothing of it is imported here).

See ``projects/apinet/README.md``.
"""
import plugins

from .config import add_apinet_config
from .engine import build_apinet_engine
from .model import apinet_resnet50, apinet_resnet101

plugins.register_models({'apinet_resnet50': apinet_resnet50, 'apinet_resnet101': apinet_resnet101})
plugins.register_engine('apinet', build_apinet_engine)
plugins.register_config('apinet', add_apinet_config)
plugins.register_benchmark('apinet', 'projects.apinet.benchmark:run', 'projects.apinet.benchmark:markdown')
# files that identify a clone; the check's module is imported only when the tool runs it
plugins.register_official_check('apinet', 'PeiqinZhuang/API-Net', ('models.py', 'train.py'),
                                'projects.apinet.official:run')
