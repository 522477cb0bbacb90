"""RGA (Relation-Aware Global Attention, Zhang et al., CVPR 2020) for torchreid.

Registers, through ``plugins`` only:

* models ``rga_s_resnet50``, ``rga_c_resnet50``, ``rga_sc_resnet50`` (:mod:`.model`), whose
  relation embeddings are computed exactly without relation matrices (:mod:`.modules`);
* their attention maps for ``tools/visualize.py``;
* benchmark section ``rga`` (:mod:`.benchmark`): train step against the official
  computation (:mod:`.reference`) and torchreid's ResNet-50s;
* official check ``rga`` (:mod:`.official`) for ``tools/check_official.py``: ours against
  the official model imported from the user's clone (only when the tool runs).

Training uses the plugin layer's ``triplet`` engine (label-smoothed CE on the
post-BN logits + batch-hard triplet on the pre-BN feature, the official loss);
the official warm-up schedule is ``train.warmup_epochs``. See ``projects/rga/README.md``.
"""
import plugins
from plugins.benchmarking.sections import register_benchmark
from plugins.benchmarking.official import register_official_check

from . import benchmark, official
from .model import rga_attention_maps, rga_c_resnet50, rga_s_resnet50, rga_sc_resnet50

plugins.register_models({'rga_s_resnet50': rga_s_resnet50, 'rga_c_resnet50': rga_c_resnet50,
                         'rga_sc_resnet50': rga_sc_resnet50}, rga_attention_maps)
register_benchmark('rga', benchmark.run, benchmark.markdown)
# files that identify a clone; official.run imports the official code from it, never at import time
register_official_check('rga', 'microsoft/Relation-Aware-Global-Attention-Networks',
                        ['reid/models/rga_model.py', 'reid/models/models_utils/rga_modules.py',
                         'reid/models/models_utils/rga_branches.py'], official.run)
