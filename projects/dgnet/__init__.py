"""DG-Net (Joint Discriminative and Generative Learning, Zheng et al., CVPR 2019) for torchreid.

Registers, through ``plugins`` only:

* model ``dgnet_resnet50``: the appearance encoder E_a, the ReID model
  (:mod:`.networks`, which also holds E_s, G and D);
* engine ``dgnet`` (:mod:`.engine`): generator/encoder step, D through
  ``plugins.AdversarialStepHook``, the teacher through ``plugins.TeacherDistillationHook``;
* config node ``dgnet`` (:mod:`.config`);
* the appearance/structure swap grid of ``tools/visualize.py swap`` (:mod:`.swap`);
* benchmark section ``dgnet`` (:mod:`.benchmark`);
* official check ``dgnet`` (:mod:`.official`) for ``tools/check_official.py``: one training
  iteration of ours against the official trainer imported from the user's clone (only when
  the tool runs).

See ``projects/dgnet/README.md``.
"""
import plugins

from .config import add_dgnet_config
from .engine import build_dgnet_engine, check_config
from .networks import dgnet_resnet50
from .swap import appearance_swap

plugins.register_models({'dgnet_resnet50': dgnet_resnet50})
plugins.register_engine('dgnet', build_dgnet_engine)
plugins.register_config('dgnet', add_dgnet_config, check=check_config)
plugins.register_appearance_swap('dgnet_resnet50', appearance_swap)
plugins.register_benchmark('dgnet', 'projects.dgnet.benchmark:run', 'projects.dgnet.benchmark:markdown')
# files that identify a clone; the check's module is imported only when the tool runs it
plugins.register_official_check('dgnet', 'NVlabs/DG-Net', ['trainer.py', 'networks.py', 'reIDmodel.py',
                                                           'random_erasing.py', 'configs/latest.yaml'],
                                'projects.dgnet.official:run', time='projects.dgnet.official:time_iterations')
